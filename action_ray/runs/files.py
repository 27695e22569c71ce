"""Reading and replacing one whole file of a run folder, local or remote.

Why one place: every file of a run (config, split, logs, result, tracking record, curves, the
evaluation reports; a sweep's tables too) is written whole, often while another process reads it (the driver follows ``metrics.jsonl``, a
resumed run reads ``result.json``). Locally a file is replaced through
:func:`action_ray.files.write_atomic`, so a reader sees the old content or the new one, never
half of it; an object store replaces an object in one PUT, which is atomic already. Reads
invalidate fsspec's listing cache first, because the writer is usually another process.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from action_ray.files import write_atomic
from action_ray.urls import filesystem_for, is_remote


def read_text(url: str, storage_options: Mapping[str, Any] | None = None) -> str | None:
    """The text of the file at ``url``, or None when there is none."""
    fs, path = filesystem_for(url, storage_options)
    fs.invalidate_cache(path)
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as handle:
        return handle.read()


def read_json(url: str, storage_options: Mapping[str, Any] | None = None) -> Any:
    """The JSON document at ``url``, or None when there is none."""
    text = read_text(url, storage_options)
    return None if text is None else json.loads(text)


def write_file(url: str, data: str | bytes, storage_options: Mapping[str, Any] | None = None) -> None:
    """Replace the file at ``url`` with ``data`` (text is written as UTF-8), creating its folder
    (on an object store: its bucket, when missing)."""
    fs, path = filesystem_for(url, storage_options)
    payload = data.encode() if isinstance(data, str) else data
    fs.makedirs(os.path.dirname(path), exist_ok=True)
    if not is_remote(url):
        write_atomic(path, payload)
        return
    with fs.open(path, "wb") as handle:
        handle.write(payload)
