"""How a stage's progress is shown: a progress bar on a terminal, periodic lines elsewhere.

Why two forms: a person at a terminal wants one bar per stage (steps, it/s, ETA, latest
losses) instead of a scrolling wall of numbers; a log file, a CI job or ``ray job logs`` wants
plain lines it can grep, one per report, each with its own ETA. The driver picks the form from
its own stdout and draws it from rank 0's reports (:mod:`action_ray.train.follow`), as a plain
``tqdm`` bar; rank 0 also writes the lines into its own Ray worker log.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Literal

ProgressMode = Literal["bar", "lines"]


def progress_mode_for_this_terminal() -> ProgressMode:
    """``bar`` when stdout is an interactive terminal (and not CI), else ``lines``."""
    interactive = sys.stdout.isatty() and os.environ.get("CI", "").lower() not in ("1", "true")
    return "bar" if interactive else "lines"


def format_eta(seconds: float) -> str:
    """``1h02m``, ``3m07s`` or ``42s``: the remaining time of a stage at the current speed."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class StageProgress:
    """Progress of one stage on rank 0 (other ranks pass ``enabled=False`` and show nothing)."""

    def __init__(self, mode: ProgressMode, stage: str, first_step: int, total: int,
                 log: Callable[[str], None] = print, enabled: bool = True) -> None:
        self.mode, self.stage, self.total, self.log, self.enabled = mode, stage, total, log, enabled
        self.step = first_step
        self._bar: Any = None
        if enabled and mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(desc=stage, total=total, initial=first_step, unit="step", dynamic_ncols=True)

    def advance(self, step: int) -> None:
        """Called after every optimiser step (cheap: the bar flushes at most once a second)."""
        if self._bar is not None:
            self._bar.update(step - self.step)
        self.step = step

    def report(self, losses: dict[str, float], it_per_s: float, checkpoint: bool) -> None:
        """At a report step: the latest window's mean losses, speed and the ETA of the stage."""
        if not self.enabled:
            return
        shown = " ".join(f"{name} {value:.4f}" for name, value in losses.items())
        if self._bar is not None:
            self._bar.set_postfix_str(shown)
            return
        eta = format_eta((self.total - self.step) / it_per_s) if it_per_s > 0 else "?"
        self.log(f"[{self.stage} {self.step}/{self.total}] {shown} | {it_per_s:.2f} it/s | eta {eta}"
                 + (" | checkpoint" if checkpoint else ""))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
