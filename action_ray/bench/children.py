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


def peak_rss_mb() -> float:
    """This process's own peak resident set (MB): ``VmHWM`` of ``/proc/self/status``.

    Not ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux carries the parent's resident set at the
    fork over the ``exec`` into that figure, so a child of a benchmark whose own process is
    large (one holding a moto S3 server's objects, say) reported the parent's size, growing
    with the collection although the child stayed flat. Falls back to it off Linux.
    """
    import resource

    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def parse_sizes(text: str, example: str) -> list[int]:
    """The collection sizes of ``--cases`` ("20,80"); :class:`ConfigError` if one is not an integer."""
    try:
        return [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--cases {text!r}: give comma-separated integers, e.g. {example}") from None
