"""The JSON-lines logs of a run and its ``result.json``.

Three logs, one JSON object per line, each rewritten whole (object stores cannot append, and
a few thousand lines cost nothing to rewrite):

* ``metrics.jsonl``: every report of the run, rewritten by rank 0 from its full history (so a
  worker group restarted from a checkpoint replaces the steps it does again);
* ``validation.jsonl``: one row per validated FT step, in step order (a step validated again
  after a restart replaces its row); failed validations carry ``error``;
* ``announcements.jsonl``: lines rank 0 shows the driver (stage starts, restarts), kept across
  restarts.

Readers return every complete row: a last line cut short (a log written before writes were
atomic, or copied while it was written) is left out instead of failing the reader.
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterable, Mapping

from action_ray.runs.files import read_text, write_file
from action_ray.runs.layout import ANNOUNCEMENTS_LOG, METRICS_LOG, RESULT_FILE, VALIDATION_LOG, join


def read_jsonl(url: str, storage_options: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every complete row of the JSON-lines file at ``url`` ([] when there is none)."""
    rows = []
    for line in (read_text(url, storage_options) or "").splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def write_jsonl(url: str, rows: Iterable[Mapping[str, Any]], storage_options: Mapping[str, Any] | None = None) -> None:
    """Replace the file at ``url`` with ``rows``, one JSON object (sorted keys) per line."""
    write_file(url, "".join(json.dumps(dict(row), sort_keys=True) + "\n" for row in rows), storage_options)


# ---------------------------------------------------------------------------- the logs
def read_metrics(run_dir: str) -> list[dict[str, Any]]:
    """Rows of ``metrics.jsonl`` (every report of the run, in order)."""
    return read_jsonl(join(run_dir, METRICS_LOG))


def write_metrics(run_dir: str, history: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl`` from the full report history."""
    write_jsonl(join(run_dir, METRICS_LOG), history)


def read_validation_log(run_dir: str) -> list[dict[str, Any]]:
    """Every validation of this run, one row per FT step in step order (failed ones carry ``error``)."""
    return read_jsonl(join(run_dir, VALIDATION_LOG))


def append_validation_row(run_dir: str, row: Mapping[str, Any]) -> None:
    """Record one validation in ``validation.jsonl``, replacing an earlier row of the same FT step.

    A worker group that Ray Train restarts from a checkpoint reports the steps after it again;
    their validations then replace the first ones instead of appearing twice.
    """
    rows = [r for r in read_validation_log(run_dir) if r.get("ft_step") != row.get("ft_step")]
    rows.append(dict(row))
    rows.sort(key=lambda r: int(r.get("ft_step", 0)))
    write_jsonl(join(run_dir, VALIDATION_LOG), rows)


def read_announcements(run_dir: str) -> list[dict[str, Any]]:
    """The lines announced to the driver so far: ``{"text", "time"}`` rows, oldest first."""
    return read_jsonl(join(run_dir, ANNOUNCEMENTS_LOG))


def announce(run_dir: str, text: str) -> None:
    """Add ``text`` to ``announcements.jsonl`` (the driver shows it as it arrives)."""
    rows = read_announcements(run_dir)
    rows.append({"time": time.time(), "text": text})
    write_jsonl(join(run_dir, ANNOUNCEMENTS_LOG), rows)


# ----------------------------------------------------------------------------- result
def read_result(run_dir: str) -> dict[str, Any] | None:
    """``result.json`` of a finished run, or None."""
    text = read_text(join(run_dir, RESULT_FILE))
    return json.loads(text) if text else None


def write_result(run_dir: str, summary: Mapping[str, Any]) -> None:
    """Write ``result.json``: its presence marks the run finished (``--resume`` then does nothing)."""
    write_file(join(run_dir, RESULT_FILE), json.dumps(dict(summary), indent=2))
