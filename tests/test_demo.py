"""``action-ray demo`` end to end, shrunk: few phantoms, a handful of iterations per stage.

Runs the real command in a subprocess (its own Ray, stopped with SIGINT on timeout so Ray
shuts down cleanly), checks every artifact and the Dice table, then re-runs it and checks
that nothing is redone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

BIN = os.path.dirname(sys.executable)
SHRINK = ["data.slice_size=32", "data.crop_size=32", "data.labelled_patients=1", "model.cut_size=16", "model.cut_stride=8", "model.local_pooling=4",
          "ft.num_queries=16", "ft.num_negatives=32", "train.collective_timeout_s=60"]


def run_demo(out: str, timeout: int = 420) -> str:
    cmd = [f"{BIN}/action-ray", "demo", "--out", out, "--cases", "5", "--iterations", "2", "--ft-iterations", "2", *SHRINK]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
        pytest.fail(f"demo timed out:\n{output[-4000:]}")
    assert proc.returncode == 0, output[-4000:]
    return output


def test_shrunk_demo_runs_end_to_end_and_resumes(tmp_path):
    out = str(tmp_path / "demo")
    output = run_demo(out)
    for step in ("1/4 synthesise", "2/4 ingest", "3/4 train", "4/4 evaluate"):
        assert step in output
    assert "[p1 2/2]" in output and "[p2 2/2]" in output and "[ft 2/2]" in output  # progress
    # a person can read it: no Ray-internal lines (placement-group cleaner, Ray Data, controller)
    # between ours, and short. Two one-line notices remain, both pushed by Ray's C++ core to
    # every driver: token authentication at start-up and, on a 2-core machine, the raylet's
    # "N PYTHON worker processes have been started" (Train's and Data's actors outnumber 4 x cores)
    for noise in ("PlacementGroupCleaner", "SplitCoordinator", "TrainController", "Traceback"):
        assert noise not in output, output[-3000:]
    assert output.count("(raylet)") <= 1, output[-3000:]
    lines = [line for line in output.split("\n") if "%|" not in line]  # tqdm bars (\r updates) aside
    assert len(lines) <= 60, output
    table = [line for line in output.splitlines() if line.startswith("| ")]
    assert any(line.startswith("| 1 RV") for line in table), output[-3000:]
    assert any(line.startswith("| 3 LV") for line in table) and any("**mean**" in line for line in table)
    runs = os.listdir(os.path.join(out, "runs"))
    assert len(runs) == 1
    run_dir = os.path.join(out, "runs", runs[0])
    result = json.load(open(os.path.join(run_dir, "result.json")))
    assert result["stages"] == ["p1", "p2", "ft"] and result["step"] == 2
    summary = json.load(open(os.path.join(run_dir, "eval-test-last", "summary.json")))
    assert summary["stage"] == "ft" and summary["n_cases"] >= 1

    again = run_demo(out)
    assert "skipped 5 already complete" in again and "is already complete" in again
    assert "[p1 " not in again  # no training step was repeated
