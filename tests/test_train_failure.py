"""The one line a failed training run ends with: the first failing rank's own exception, not
Ray's banner and truncated tracebacks, plus advice for causes a user can fix."""

from __future__ import annotations

import errno
import os

from ray.train import ControllerError, WorkerGroupError

from action_ray.train.failure import describe_training_failure


def test_a_full_disk_on_one_worker_is_named_with_its_file_and_advice():
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/tmp/action-ray-ckpt-x/.state.pt.1.part")
    error = WorkerGroupError("[Rank 0 Error Snippet]:\nTraceback (most recent call last):\n ...", {0: full})
    cause, advice = describe_training_failure(error)
    assert cause == ("worker 0: OSError: [Errno 28] No space left on device: "
                     "'/tmp/action-ray-ckpt-x/.state.pt.1.part'")
    assert advice is not None and "free space" in advice


def test_several_failing_workers_name_the_first_rank_and_count_the_others():
    boom = RuntimeError("bank size mismatch\nsecond line of detail")
    error = WorkerGroupError("snippets", {2: ValueError("later"), 1: boom, 3: ValueError("later")})
    cause, advice = describe_training_failure(error)
    assert cause == "worker 1 (and 2 other workers): RuntimeError: bank size mismatch"
    assert advice is None


def test_a_wrapped_cause_and_a_controller_failure():
    try:
        try:
            raise MemoryError("cannot allocate")
        except MemoryError as inner:
            raise RuntimeError("step failed") from inner
    except RuntimeError as outer:
        wrapped = outer
    cause, advice = describe_training_failure(WorkerGroupError("x", {0: wrapped}))
    assert cause == "worker 0: MemoryError: cannot allocate" and "memory" in advice
    cause, advice = describe_training_failure(ControllerError(KeyError("storage")))
    assert cause == "Ray Train controller: KeyError: 'storage'" and advice is None
