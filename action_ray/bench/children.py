"""Measuring in a fresh child process, so that a run's peak RSS and its imports are its own.

Benchmarks that compare collection sizes (``ingest``, ``catalog``) run every measurement as
``python -m MODULE ARG...``; the child prints one JSON object as the last line of its output.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping

from action_ray.errors import ConfigError


def run_child(module: str, argv: list[str], env: Mapping[str, str] | None = None) -> dict:
    """Run ``python -m module argv...`` (with ``env``, if given) and return its JSON result."""
    result = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, check=False,
                            env=dict(env) if env is not None else None)
    if result.returncode != 0:
        last = ([line for line in result.stderr.splitlines() if line.strip()] or ["no output"])[-1]
        raise RuntimeError(f"bench child {module} {' '.join(argv[:1])} failed ({last.strip()[:300]}); "
                           f"its output ends:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def parse_sizes(text: str, example: str) -> list[int]:
    """The collection sizes of ``--cases`` ("20,80"); :class:`ConfigError` if one is not an integer."""
    try:
        return [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--cases {text!r}: give comma-separated integers, e.g. {example}") from None
