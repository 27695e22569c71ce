"""``dice_vs_label_ratio.png``: Dice against the labelled fraction, one line per method.

x is the *measured* labelled fraction of the train patients (from each run's recorded split,
so "1 patient" and "5 %" land where they really are), on a log axis because the interesting
range is 1–10 %. y is the test Dice when the sweep evaluated the test split, else the sweep
metric (validation Dice). Points are means over labelled-subset draws with ± sd error bars.
Lines are the groups of swept keys other than seeds and label amount (usually just the method).
"""

from __future__ import annotations

import io
import math
from typing import Any, Mapping, Sequence

from action_ray.tuning.results import LABEL_KEYS, group_keys, grouped

PLOT_NAME = "dice_vs_label_ratio.png"


def plotted_metric(rows: Sequence[Mapping[str, Any]], metric: str) -> str:
    """``test_dice`` if any finished trial has it, else ``metric``."""
    return "test_dice" if any("test_dice" in r for r in rows) else metric


def plot_series(rows: Sequence[Mapping[str, Any]], metric: str) -> dict[str, list[tuple[float, float, float]]]:
    """Line label -> sorted [(label_fraction, mean, sd)] over finished trials."""
    y_metric = plotted_metric(rows, metric)
    line_keys = [k for k in group_keys(rows) if k not in LABEL_KEYS]
    series: dict[str, list[tuple[float, float, float]]] = {}
    for entry in grouped(rows, [y_metric]):
        mean, sd, n = entry[y_metric]
        if n == 0 or not math.isfinite(entry["label_fraction"]):
            continue
        label = ", ".join(str(entry[k]) if k == "method" else f"{k}={entry[k]}" for k in line_keys) or y_metric
        series.setdefault(label, []).append((entry["label_fraction"], mean, sd if math.isfinite(sd) else 0.0))
    return {label: sorted(points) for label, points in sorted(series.items())}


def plot_dice_vs_label_fraction(rows: Sequence[Mapping[str, Any]], metric: str) -> bytes:
    """PNG bytes of the plot (matplotlib, Agg backend; nothing is shown)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    y_metric = plotted_metric(rows, metric)
    figure = Figure(figsize=(6.0, 4.0), dpi=120)
    axes = figure.add_subplot()
    series = plot_series(rows, metric)
    for label, points in series.items():
        xs = [p[0] * 100 for p in points]
        axes.errorbar(xs, [p[1] * 100 for p in points], yerr=[p[2] * 100 for p in points],
                      marker="o", capsize=3, label=label)
    if series:
        axes.set_xscale("log")
        ticks = sorted({round(p[0] * 100, 1) for points in series.values() for p in points})
        axes.set_xticks(ticks, [f"{t:g}" for t in ticks])
        axes.minorticks_off()
        axes.set_ylim(0, 100)
        axes.legend(fontsize=8)
    else:
        axes.text(0.5, 0.5, "no finished trials", ha="center", va="center", transform=axes.transAxes)
    axes.set_xlabel("labelled train patients (%)")
    axes.set_ylabel(f"{y_metric} (%)")
    axes.set_title("Dice vs label ratio (mean ± sd over labelled-subset draws)", fontsize=9)
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
