"""A full disk while a checkpoint is written: the run stops with one clear line, the last good
checkpoint stays whole, and once space is free ``--resume`` finishes the run from it.

The fault is injected at the file system boundary, not inside the toolkit: a ``sitecustomize``
module on the driver's ``PYTHONPATH`` (inherited by Ray's raylet and every worker it starts)
makes ``open`` for writing fail with ``ENOSPC`` for a checkpoint's ``state.pt`` once a process
has written the allowed number of them, exactly what a full temp disk on a node does. The
toolkit, Ray Train's failure handling and the resume path all run unmodified.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from action_ray.runs.checkpoint import load_checkpoint
from action_ray.runs.resolve import latest_ray_checkpoint
from tests.resume import resume_to_the_end
from tests.test_train_ray import make_tiny_store

pytestmark = pytest.mark.slow

FULL_DISK_HOOK = textwrap.dedent('''
    """Test hook: checkpoint state writes fail with ENOSPC after $ACTION_RAY_TEST_FULL_DISK allows."""
    import builtins
    import errno
    import os

    _FLAG = os.environ.get("ACTION_RAY_TEST_FULL_DISK")
    if _FLAG:
        _open = builtins.open
        _written = [0]

        def _open_on_a_full_disk(file, mode="r", *args, **kwargs):
            name = os.fspath(file) if isinstance(file, (str, os.PathLike)) else ""
            if ("action-ray-ckpt-" in str(name) and "state.pt" in str(name)
                    and any(m in mode for m in "wax+") and os.path.exists(_FLAG)):
                with _open(_FLAG) as handle:
                    allowed = int(handle.read().strip() or 0)
                if _written[0] >= allowed:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(name))
                _written[0] += 1
            return _open(file, mode, *args, **kwargs)

        builtins.open = _open_on_a_full_disk
''')


def test_a_full_disk_stops_the_run_clearly_and_resume_continues_from_the_last_good_checkpoint(tmp_path, capsys):
    store = str(tmp_path / "store.zarr")
    make_tiny_store(store)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(FULL_DISK_HOOK)
    flag = tmp_path / "full-disk"
    flag.write_text("1")  # the checkpoint at step 2 is written, the one at step 4 meets a full disk
    argv = ["train", "--config", "cpu-demo", f"data.store={store}", f"train.storage_path={tmp_path / 'runs'}",
            "train.run_name=full", "method=supervised", "data.label_ratio=1.0", "data.slice_size=32",
            "schedule.ft.iterations=8", "train.report_every=2", "train.checkpoint_every=2", "eval.val_every=0",
            "train.max_failures=0"]
    env = {**os.environ, "ACTION_RAY_TEST_FULL_DISK": str(flag),
           "PYTHONPATH": os.pathsep.join([str(hooks), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, "-m", "action_ray.cli", *argv], env=env, capture_output=True,
                          text=True, timeout=480)
    run_dir = tmp_path / "runs" / "full"
    assert done.returncode != 0, done.stdout[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("action-ray train: error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    assert "worker 0: OSError: [Errno 28] No space left on device" in errors[0] and "state.pt" in errors[0]
    assert "free space" in errors[0] and "continue with --resume, from" in errors[0] and "checkpoint_" in errors[0]
    assert "Traceback" not in done.stderr
    assert not (run_dir / "result.json").exists()

    last = latest_ray_checkpoint(str(run_dir))
    assert last is not None, "the checkpoint written before the disk filled up must be kept"
    kept = load_checkpoint(last)
    assert (kept.stage, kept.step) == ("ft", 2)

    flag.unlink()  # space freed
    result, logged = resume_to_the_end(argv, run_dir, capsys)
    assert result["step"] == 8
    assert logged == [2, 4, 6, 8]  # step 4 was reported before its checkpoint failed: logged once
