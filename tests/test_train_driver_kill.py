"""The driver of `action-ray train` is SIGKILLed (with the local Ray it started) after a
checkpoint; the same command with --resume finishes the run from that checkpoint: every step
logged exactly once, nothing before the checkpoint trained again."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from action_ray.cli import main as cli_main
from tests.processes import kill_tree
from tests.resume import resume_to_the_end
from tests.test_train_ray import make_tiny_store

pytestmark = pytest.mark.slow


def test_a_killed_driver_resumes_from_its_last_checkpoint(tmp_path, capsys):
    store = str(tmp_path / "store.zarr")
    make_tiny_store(store)
    argv = ["train", "--config", "cpu-demo", f"data.store={store}", f"train.storage_path={tmp_path / 'runs'}",
            "train.run_name=killed", "method=supervised", "data.label_ratio=1.0", "data.slice_size=32",
            "schedule.ft.iterations=60", "train.report_every=10", "train.checkpoint_every=10", "eval.val_every=0"]
    run_dir = tmp_path / "runs" / "killed"
    log_path = tmp_path / "killed-driver.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "action_ray.cli", *argv], start_new_session=True,
                                stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            # Ray writes its snapshot once a checkpoint's upload is complete: kill after that
            if (run_dir / "checkpoint_manager_snapshot.json").exists():
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"no checkpoint before the driver ended (exit code {proc.poll()}):\n"
                        + log_path.read_text()[-3000:])
    finally:
        kill_tree(proc)
    assert not (run_dir / "result.json").exists()
    before = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert before and before[-1] < 60

    assert cli_main(argv) == 2  # a second fresh start over the run is refused
    assert "--resume" in capsys.readouterr().err
    result, logged = resume_to_the_end(argv, run_dir, capsys)
    assert result["step"] == 60
    assert logged == list(range(10, 61, 10))  # no step lost from the log, none twice
