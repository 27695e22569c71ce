"""The files a finished sweep leaves in its folder: ``results.csv``, ``results.md`` and the plot.

Kept apart from :mod:`action_ray.tuning.results` (rows and tables) and
:mod:`action_ray.tuning.plots` (figures) because it needs both, and the plot needs the rows'
grouping: one module above the two keeps the imports one way.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from action_ray.tuning.plots import PLOT_NAME, plot_dice_vs_label_fraction
from action_ray.tuning.results import RESULTS_CSV, RESULTS_MD, results_csv, results_markdown
from action_ray.runs.files import write_file


def write_results(sweep_dir: str, rows: Sequence[Mapping[str, Any]], *, metric: str,
                  seconds: float | None = None, command: str | None = None) -> list[str]:
    """Write ``results.csv``, ``results.md`` and the plot into ``sweep_dir``; returns the paths."""
    written = []
    for name, data in ((RESULTS_CSV, results_csv(rows)),
                       (RESULTS_MD, results_markdown(rows, metric, seconds, command)),
                       (PLOT_NAME, plot_dice_vs_label_fraction(rows, metric))):
        written.append(f"{sweep_dir}/{name}")
        write_file(written[-1], data)
    return written
