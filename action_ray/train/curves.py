"""``curves.png`` of a run: losses per stage, validation Dice, and the training diagnostics.

Why a picture: whether a distillation loss drowns the supervised signal, or a teacher hands
out background-only pseudo-labels, is a shape over steps that a table of numbers hides. The
figure is drawn from ``metrics.jsonl`` (every report) and ``validation.jsonl`` after the run
(and again on resume), one row of panels per stage, plus one panel of validation Dice.
"""

from __future__ import annotations

import io
from typing import Any, Mapping, Sequence

from action_ray.runs.files import write_file
from action_ray.runs.layout import CURVES_FILE, join

_NOT_LOSSES = {"stage", "step", "epoch", "lr", "it_per_s", "time", "replicas_identical"}


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    points = [(row["step"], row[key]) for row in rows if isinstance(row.get(key), (int, float))]
    return [p[0] for p in points], [float(p[1]) for p in points]


def _keys(rows: Sequence[Mapping[str, Any]], prefix: str | None) -> list[str]:
    seen: list[str] = []
    for row in rows:
        for key in row:
            if key in _NOT_LOSSES or key in seen:
                continue
            diagnostic = "/" in key or key == "pseudo_foreground"
            if prefix is None and not diagnostic:
                seen.append(key)
            elif prefix is not None and key.startswith(prefix):
                seen.append(key)
    return seen


def plot_curves(metrics: Sequence[Mapping[str, Any]], validation: Sequence[Mapping[str, Any]],
                title: str = "") -> bytes:
    """PNG bytes: per stage, losses and diagnostics against the stage's step; then val Dice."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    stages = list(dict.fromkeys(row.get("stage") for row in metrics if row.get("stage")))
    panels: list[tuple[str, list[Mapping[str, Any]], list[str], str]] = []
    for stage in stages:
        rows = [r for r in metrics if r.get("stage") == stage]
        panels.append((f"{stage}: losses", rows, _keys(rows, None), "linear"))
        for prefix, what, scale in (("grad_ratio/", "|∇L_aux| / |∇L_sup|", "log"),
                                    ("grad_cos/", "cos(∇L_aux, ∇L_sup)", "linear"),
                                    ("pseudo_f", "pseudo-label share per class", "linear"),
                                    ("pseudo_confident/", "confident share per pseudo-class", "linear")):
            keys = _keys(rows, prefix)
            if keys:
                panels.append((f"{stage}: {what}", rows, keys, scale))
    has_val = any(isinstance(v.get("val_dice"), (int, float)) for v in validation)
    count = len(panels) + (1 if has_val else 0)
    if count == 0:
        count = 1
    columns = min(3, count)
    grid_rows = (count + columns - 1) // columns
    figure = Figure(figsize=(4.2 * columns, 3.0 * grid_rows), dpi=100)
    for index, (name, rows, keys, scale) in enumerate(panels):
        axes = figure.add_subplot(grid_rows, columns, index + 1)
        for key in keys:
            xs, ys = _series(rows, key)
            if scale == "log":
                xs, ys = zip(*[(x, y) for x, y in zip(xs, ys) if y > 0]) if any(y > 0 for y in ys) else ([], [])
            axes.plot(xs, ys, label=key.split("/", 1)[-1] if "/" in key else key, linewidth=1.2)
        axes.set_yscale(scale)
        axes.set_title(name, fontsize=9)
        axes.set_xlabel("step", fontsize=8)
        axes.tick_params(labelsize=7)
        axes.grid(True, alpha=0.3)
        if keys:
            axes.legend(fontsize=6)
    if has_val:
        axes = figure.add_subplot(grid_rows, columns, len(panels) + 1)
        rows = sorted((v for v in validation if isinstance(v.get("val_dice"), (int, float))),
                      key=lambda v: v["ft_step"])
        axes.plot([v["ft_step"] for v in rows], [100 * v["val_dice"] for v in rows], marker="o")
        axes.set_title("validation Dice (mean of foreground classes)", fontsize=9)
        axes.set_xlabel("FT step", fontsize=8)
        axes.set_ylabel("%", fontsize=8)
        axes.grid(True, alpha=0.3)
    if not panels and not has_val:
        figure.add_subplot(1, 1, 1).text(0.5, 0.5, "no reports yet", ha="center", va="center")
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_curves(run_dir: str, metrics: Sequence[Mapping[str, Any]],
                 validation: Sequence[Mapping[str, Any]], title: str = "") -> str:
    """Draw and write ``<run_dir>/curves.png`` (local or URL); returns its location."""
    where = join(run_dir, CURVES_FILE)
    write_file(where, plot_curves(metrics, validation, title))
    return where
