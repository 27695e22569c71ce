"""A run interrupted twice, as runs are in real life, and finished by ``--resume``.

1. **A full disk while a checkpoint is written**: the run stops with one clear line, and the
   last good checkpoint stays whole. The fault is injected at the file system boundary, not
   inside the toolkit: a ``sitecustomize`` module on the driver's ``PYTHONPATH`` (inherited by
   Ray's raylet and every worker it starts) makes ``open`` for writing fail with ``ENOSPC`` for a
   checkpoint's ``state.pt`` once a process has written the allowed number of them, exactly what
   a full temp disk on a node does. The toolkit, Ray Train's failure handling and the resume path
   all run unmodified.
2. A second fresh start over the run is refused (it must say ``--resume``).
3. **The driver SIGKILLed** (with the local Ray it started) during ``--resume``, once a newer
   checkpoint is recorded.
4. ``--resume`` again finishes the run from that checkpoint: every step logged exactly once,
   nothing before the checkpoint trained again.

One scenario instead of two tests, because each break and each resume is a Ray Train start-up
(about 20 s on a 2-core CI runner); the guarantees checked are those of both.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from action_ray.cli import main as cli_main
from action_ray.runs.checkpoint import load_checkpoint
from action_ray.runs.resolve import latest_ray_checkpoint
from tests.processes import kill_tree
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


def test_a_full_disk_then_a_killed_driver_each_stop_the_run_and_resume_finishes_it(tmp_path, capsys):
    store = str(tmp_path / "store.zarr")
    make_tiny_store(store)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(FULL_DISK_HOOK)
    flag = tmp_path / "full-disk"
    flag.write_text("1")  # the checkpoint at step 10 is written, the one at step 20 meets a full disk
    iterations, every = 60, 10
    argv = ["train", "--config", "cpu-demo", f"data.store={store}", f"train.storage_path={tmp_path / 'runs'}",
            "train.run_name=rough", "method=supervised", "data.label_ratio=1.0", "data.slice_size=32",
            f"schedule.ft.iterations={iterations}", f"train.report_every={every}", f"train.checkpoint_every={every}",
            "eval.val_every=0", "train.max_failures=0"]
    run_dir = tmp_path / "runs" / "rough"

    # 1. the disk fills up
    env = {**os.environ, "ACTION_RAY_TEST_FULL_DISK": str(flag),
           "PYTHONPATH": os.pathsep.join([str(hooks), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, "-m", "action_ray.cli", *argv], env=env, capture_output=True,
                          text=True, timeout=480)
    assert done.returncode != 0, done.stdout[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("action-ray train: error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    assert "worker 0: OSError: [Errno 28] No space left on device" in errors[0] and "state.pt" in errors[0]
    assert "free space" in errors[0] and "continue with --resume, from" in errors[0] and "checkpoint_" in errors[0]
    assert "Traceback" not in done.stderr
    assert not (run_dir / "result.json").exists()
    last_good = latest_ray_checkpoint(str(run_dir))
    assert last_good is not None, "the checkpoint written before the disk filled up must be kept"
    kept = load_checkpoint(last_good)
    assert (kept.stage, kept.step) == ("ft", every)

    # 2. starting it afresh over the run is refused
    assert cli_main(argv) == 2
    assert "--resume" in capsys.readouterr().err

    # 3. space freed; the resumed run's driver is killed once it has recorded a newer checkpoint
    flag.unlink()
    log_path = tmp_path / "killed-driver.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "action_ray.cli", *argv, "--resume"], start_new_session=True,
                                stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            # Ray names a checkpoint in its snapshot once its upload is complete: kill after that
            if latest_ray_checkpoint(str(run_dir)) not in (None, last_good):
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"no newer checkpoint before the driver ended (exit code {proc.poll()}):\n"
                        + log_path.read_text()[-3000:])
    finally:
        kill_tree(proc)
    assert not (run_dir / "result.json").exists()
    resumed_from = load_checkpoint(latest_ray_checkpoint(str(run_dir)))
    assert every < resumed_from.step < iterations

    # 4. --resume finishes it: no step lost from the log, none logged twice (step 20 was reported
    # before its checkpoint failed, then trained and reported again after the first resume)
    result, logged = resume_to_the_end(argv, run_dir, capsys)
    assert result["step"] == iterations
    assert logged == list(range(every, iterations + 1, every))
