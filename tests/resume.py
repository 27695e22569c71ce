"""Helpers of the tests that break a `train` run and continue it: ``--resume`` in this process
until the run completes (then the steps its ``metrics.jsonl`` logged), and a local Ray whose
workers inherit a given environment."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator, Mapping, Sequence

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


@contextlib.contextmanager
def local_ray_with_env(env: Mapping[str, str]) -> Iterator[None]:
    """A local Ray started with ``env`` exported, so every worker it starts inherits it (the AWS
    variables of an S3 endpoint, say); Ray stopped and the environment restored afterwards."""
    import ray

    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=256 * 2**20,
             log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
