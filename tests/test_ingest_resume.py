"""SIGKILL an ingest half-way, run it again, and check nothing was lost, duplicated or rewritten.

Killed with dask's worker processes, and on a local Ray (``--scheduler ray``: the driver, the
Ray it started and its workers all die at once, as when the job's node is lost)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from action_ray.store import open_store
from niftis import expected_arrays, write_lits
from tests.processes import kill_tree

N_CASES = 24
SHAPE = (64, 64, 12)


def ingest_command(src, dst, scheduler: str) -> list[str]:
    return [sys.executable, "-m", "action_ray.cli", "ingest", str(src), str(dst), "--layout", "lits",
            "--workers", "2", "--scheduler", scheduler, "--no-progress"]


def complete_ids(dst) -> list[str]:
    if not (dst / "zarr.json").exists():
        return []
    return [info.case_id for info in open_store(str(dst)).list_cases()]


@pytest.mark.slow
@pytest.mark.parametrize("killed_scheduler", ["processes", "ray"])
def test_sigkill_half_way_then_resume(tmp_path, killed_scheduler):
    written = write_lits(tmp_path / "src", N_CASES, unlabelled=(5, 17), shape=SHAPE)
    dst = tmp_path / "s.zarr"
    # own session: SIGKILL reaches the dask worker processes (or the local Ray) too, like an OOM
    # kill of the job; the killed run uses worker processes or Ray, the resumed one threads
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    proc = subprocess.Popen(ingest_command(tmp_path / "src", dst, killed_scheduler), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 120  # a local Ray takes a while to start on 2 loaded cores
        while len(complete_ids(dst)) < 3:
            assert proc.poll() is None, "ingest ended before it could be killed"
            assert time.monotonic() < deadline, "no case completed within 120 s"
            time.sleep(0.05)
    finally:
        kill_tree(proc)
    done_before = complete_ids(dst)
    assert 3 <= len(done_before) < N_CASES, "the kill did not land half-way"
    mtimes_before = {c: sorted((p.name, p.stat().st_mtime_ns) for p in (dst / "cases" / c).rglob("*") if p.is_file())
                     for c in done_before}

    rerun = subprocess.run(ingest_command(tmp_path / "src", dst, "threads"), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{len(done_before)} cases already complete" in rerun.stdout
    assert f"{N_CASES - len(done_before)} written" in rerun.stdout

    store = open_store(str(dst))
    ids = [info.case_id for info in store.list_cases()]
    assert sorted(ids) == sorted(w.case_id for w in written) and len(set(ids)) == len(ids)
    assert store.incomplete_cases() == []
    assert sorted(p.name for p in (dst / "cases").iterdir() if p.is_dir()) == sorted(ids)
    for case_id, stamps in mtimes_before.items():  # complete cases were not rewritten
        assert sorted((p.name, p.stat().st_mtime_ns) for p in (dst / "cases" / case_id).rglob("*")
                      if p.is_file()) == stamps
    for w in written:
        image, label = store.read_volume(w.case_id)
        np.testing.assert_array_equal(image, expected_arrays(w.image))
        if w.label is None:
            assert label is None
        else:
            np.testing.assert_array_equal(label, expected_arrays(w.label))
