"""The driver's view of a running job: progress read from the run folder, not from Ray's log stream.

Why: a Ray driver that forwards its workers' output (``log_to_driver``) also forwards everything
Ray's own actors print — Train's placement-group cleaner and controller warnings, Ray Data's
per-epoch "execution finished" lines, raylet start-up warnings — interleaved with ours, several
hundred lines for a ten-minute demo. The run folder already holds what a person wants to see:
rank 0 rewrites ``metrics.jsonl`` at every report and the validator appends to
``validation.jsonl``. So ``train`` starts Ray without worker-log forwarding and this thread,
in the driver, turns new rows into a progress bar per stage (a terminal) or one line per report
(logs, CI, ``ray job logs``), plus a line per validation. Ray's own logs stay in the Ray session
folder, where ``ray logs`` finds them; a failed run still raises with the worker's error.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Callable

from action_ray.config import STAGE_ORDER
from action_ray.runs.logs import read_announcements, read_metrics, read_validation_log
from action_ray.train.progress import ProgressMode, StageProgress

#: report fields that are not losses (the rest without a "/" are the step's losses)
NON_LOSS_KEYS = frozenset({"stage", "step", "epoch", "lr", "it_per_s", "time", "replicas_identical", "nodes",
                           "pseudo_foreground"})


def report_losses(row: dict[str, Any]) -> dict[str, float]:
    """The step losses of one ``metrics.jsonl`` row (diagnostics are ``group/name`` keys)."""
    return {k: float(v) for k, v in row.items()
            if k not in NON_LOSS_KEYS and "/" not in k and isinstance(v, (int, float)) and not isinstance(v, bool)}


class ReportFollower:
    """Polls ``<run>/metrics.jsonl``, ``validation.jsonl`` and ``announcements.jsonl`` and shows
    what is new (:mod:`action_ray.runs.logs` reads them; a row cut short is not shown yet).

    ``stage_totals`` maps each stage to its iterations (the bar's length). Rows already in the
    files when it starts (a resumed run's history) are not shown again.
    """

    def __init__(self, run_dir: str, stage_totals: dict[str, int], mode: ProgressMode, checkpoint_every: int,
                 log: Callable[[str], None] = print, interval_s: float = 1.0) -> None:
        self.run_dir = run_dir
        self.stage_totals, self.mode, self.log, self.interval_s = stage_totals, mode, log, interval_s
        self.checkpoint_every = checkpoint_every
        history = read_metrics(run_dir)
        self._seen_reports = len(history)
        self._seen_times = [row.get("time") for row in history]  # a restart rewrites rows: times differ
        self._resumed_at = (str(history[-1]["stage"]), int(history[-1]["step"])) if history else None
        self._seen_validations = len(read_validation_log(run_dir))
        self._seen_announcements = len(read_announcements(run_dir))
        self._progress: StageProgress | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="action-ray-progress", daemon=True)

    def __enter__(self) -> "ReportFollower":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        try:
            self.poll()  # the last report and validation of the run
        except Exception:  # noqa: BLE001 - a finished run must not fail on showing its last line
            pass
        if self._progress is not None:
            self._progress.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - showing progress must never break a run
                pass

    def poll(self) -> None:
        """Show every report and validation row not shown yet, a validation after its FT report,
        and each announcement (a stage start or restart) before the first report written after it
        (one poll can find a stage's last report and the next stage's start together)."""
        announced = read_announcements(self.run_dir)
        pending = list(announced[self._seen_announcements:])
        self._seen_announcements = max(self._seen_announcements, len(announced))
        rows = read_metrics(self.run_dir)
        self._notice_restart(rows)
        checks = read_validation_log(self.run_dir)
        order = {stage: i for i, stage in enumerate(STAGE_ORDER)}
        events = [((order.get(str(r.get("stage")), 0), int(r.get("step", 0)), 0), self._show_report, r)
                  for r in rows[self._seen_reports:]]
        events += [((order["ft"], int(r.get("ft_step", 0)), 1), self._show_validation, r)
                   for r in checks[self._seen_validations:]]
        for _, show, row in sorted(events, key=lambda event: event[0]):
            if show == self._show_report:
                while pending and float(pending[0].get("time", 0.0)) <= float(row.get("time", math.inf)):
                    self.log(str(pending.pop(0).get("text", "")))
            show(row)
        for announcement in pending:
            self.log(str(announcement.get("text", "")))
        self._seen_times = [row.get("time") for row in rows]
        self._seen_reports = len(rows)
        self._seen_validations = max(self._seen_validations, len(checks))

    def _notice_restart(self, rows: list[dict[str, Any]]) -> None:
        """A new worker group (a lost worker or node) rewrites ``metrics.jsonl`` from its
        checkpoint's history (and announces where it starts): show the steps it does again."""
        kept = 0
        while kept < min(len(rows), self._seen_reports) and rows[kept].get("time") == self._seen_times[kept]:
            kept += 1
        if kept == self._seen_reports:
            return
        self._seen_reports = kept
        if self._progress is not None:
            self._progress.close()
            self._progress = None

    def _show_report(self, row: dict[str, Any]) -> None:
        stage, step = str(row.get("stage")), int(row.get("step", 0))
        if self._progress is None or self._progress.stage != stage:
            if self._progress is not None:
                self._progress.close()
            total = self.stage_totals.get(stage, step)
            first = self._resumed_at[1] if self._resumed_at and self._resumed_at[0] == stage else 0
            self._progress = StageProgress(self.mode, stage, first, total, self.log)
        self._progress.advance(step)
        checkpoint = step % self.checkpoint_every == 0 or step == self._progress.total
        self._progress.report(report_losses(row), float(row.get("it_per_s", 0.0)), checkpoint)

    def _show_validation(self, row: dict[str, Any]) -> None:
        step = row.get("ft_step")
        if "error" in row:
            self.log(f"[validation ft {step}] failed ({row['error']}); skipped, training continues")
        elif "val_dice" in row:
            self.log(f"[validation ft {step}] val Dice {float(row['val_dice']):.4f}"
                     + (" | new best" if row.get("new_best") else ""))
