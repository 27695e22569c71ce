"""The second half of the tests that break a `train` run and continue it: ``--resume`` in this
process until the run completes, then the steps its ``metrics.jsonl`` logged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from action_ray.cli import main as cli_main


def resume_to_the_end(argv: Sequence[str], run_dir: Path, capsys) -> tuple[dict, list[int]]:
    """Run ``action-ray <argv> --resume`` (its own local Ray, shut down after) and return
    (``result.json``, the logged steps in order)."""
    import ray

    try:
        code = cli_main([*argv, "--resume"])
        assert code == 0, capsys.readouterr().err[-3000:]
    finally:
        ray.shutdown()
    result = json.loads((run_dir / "result.json").read_text())
    logged = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return result, logged
