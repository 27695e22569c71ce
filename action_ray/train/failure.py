"""One line that says why a training run failed, where it can go on from, and what to do.

Why: Ray Train reports a failed worker group as ``TrainingFailedError`` whose text is a banner
plus each rank's traceback, truncated in the middle. Passed through as the CLI's one-line
error, the line a user needs (``OSError: [Errno 28] No space left on device: '<file>'``) is cut
away and a traceback is printed instead. Ray keeps the original exceptions per rank
(``WorkerGroupError.worker_failures``) and the controller's (``ControllerError``); this module
names the first rank's exception by type and message, says how many other ranks failed, adds
advice for the causes a user can fix (a full disk, lost memory), and names the checkpoint that
``--resume`` will continue from.
"""

from __future__ import annotations

import errno
from typing import Any

#: errno -> what the user can do about it.
ADVICE_BY_ERRNO = {
    errno.ENOSPC: "free space on the worker's temp disk (TMPDIR) or under train.storage_path",
    errno.EDQUOT: "the disk quota is used up: free space or raise the quota",
    errno.EACCES: "check the permissions of train.storage_path and TMPDIR",
}


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]


def _describe(error: BaseException) -> str:
    """``Type: first line of the message`` of the innermost cause of ``error``."""
    while error.__cause__ is not None and error.__cause__ is not error:
        error = error.__cause__
    return f"{type(error).__name__}: {_first_line(str(error))}".rstrip(": ")


def _advice(error: BaseException) -> str | None:
    while True:
        if isinstance(error, OSError) and error.errno in ADVICE_BY_ERRNO:
            return ADVICE_BY_ERRNO[error.errno]
        if isinstance(error, MemoryError) or "OutOfMemory" in type(error).__name__:
            return "a worker ran out of memory: lower data.*_batch or give each worker more memory"
        if error.__cause__ is None or error.__cause__ is error:
            return None
        error = error.__cause__


def describe_training_failure(exc: BaseException) -> tuple[str, str | None]:
    """(what failed, in one line; advice or None) for a ``TrainingFailedError`` from ``fit()``."""
    failures: dict[int, Any] = dict(getattr(exc, "worker_failures", None) or {})
    if failures:
        rank = min(failures)
        error = failures[rank]
        others = len(failures) - 1
        where = f"worker {rank}" + (f" (and {others} other worker{'s' if others > 1 else ''})" if others else "")
        return f"{where}: {_describe(error)}", _advice(error)
    controller = getattr(exc, "controller_failure", None)
    if isinstance(controller, BaseException):
        return f"Ray Train controller: {_describe(controller)}", _advice(controller)
    return _first_line(str(exc)), None
