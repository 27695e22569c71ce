"""Writing a local file so that a reader never sees half of it.

One helper for every file action-ray writes whole (checkpoints, logs rewritten in place,
reports, synthetic scans): the bytes go to a temporary name in the same folder, are flushed to
disk, and ``os.replace`` swaps them in, which is atomic on POSIX and Windows. A crash leaves
either the old file or the new one, and never a stray temporary.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` (bytes, or text written as UTF-8) in one step."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with open(tmp, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
