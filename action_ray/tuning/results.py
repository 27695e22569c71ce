"""A sweep's results as files people read: ``results.csv``, ``results.md`` and a plot.

* ``results.csv``: one row per trial: its swept keys, status, label facts, and every metric
  (validation, and test if the sweep evaluated it).
* ``results.md``: the trials grouped by their swept keys **except the seeds** (``train.seed``,
  ``data.split_seed``), each metric as mean ± sd over those labelled-subset draws, then the
  per-trial rows. Grouping over seeds is what turns a grid into the paper's table.
* ``dice_vs_label_ratio.png``: see :mod:`action_ray.tuning.plots`.

A trial that ASHA stopped keeps its last validation; it is marked ``stopped`` and left out of
the grouped table's means (its budget was smaller), but listed per trial.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from typing import Any, Iterable, Mapping, Sequence

from action_ray.runs.files import write_file
from action_ray.tuning.space import TIME_ATTR, trial_overrides

#: Swept keys that only redraw randomness: averaged over, never grouped by.
SEED_KEYS = ("train.seed", "data.split_seed")
#: Label-amount keys: the plot's x axis (via the measured ``label_fraction``).
LABEL_KEYS = ("data.label_ratio", "data.labelled_patients")
RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
#: Columns always first in results.csv, in this order.
LEAD_COLUMNS = ("trial", "status", "labelled_patients", "train_patients", "label_fraction", TIME_ATTR,
                "train_seconds")


def trial_rows(grid: Any, space_keys: Sequence[str]) -> list[dict[str, Any]]:
    """One flat row per trial of a Tune ``ResultGrid`` (swept keys expanded to dotted keys)."""
    rows = []
    for result in grid:
        config = result.config or {}
        params = trial_overrides({k: config[k] for k in space_keys if k in config})
        metrics = dict(result.metrics or {})
        if result.error is not None:
            status = "error"
        elif "train_seconds" in metrics:
            status = "done"
        else:
            status = "stopped"
        row: dict[str, Any] = {"trial": metrics.get("trial_id") or _trial_id(result), "status": status}
        row.update(params)
        for key, value in metrics.items():
            if key in ("config", "trial_id") or isinstance(value, (dict, list)):
                continue
            if key.startswith(("val_", "test_")) or key in LEAD_COLUMNS or key in ("run_dir", "test_seconds"):
                row[key] = value
        if result.error is not None:
            row["error"] = str(result.error).splitlines()[0][:300]
        rows.append(row)
    return sorted(rows, key=lambda r: str(r["trial"]))


def _trial_id(result: Any) -> str:
    path = str(getattr(result, "path", "") or "")
    return path.rstrip("/").rsplit("/", 1)[-1]


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    seen: list[str] = [c for c in LEAD_COLUMNS]
    for row in rows:
        for key in row:
            if key not in seen:
                seen.append(key)
    return seen


def results_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV text, one row per trial (NaN and missing values as empty cells)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_columns(rows), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()})
    return buffer.getvalue()


def swept_keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The dotted training keys the trials set (columns that are neither facts nor metrics)."""
    keys: list[str] = []
    for row in rows:
        for key in row:
            if key in LEAD_COLUMNS or key.startswith(("val_", "test_")) or key in (
                    "run_dir", "error", "test_seconds"):
                continue
            if key not in keys:
                keys.append(key)
    return keys


def group_keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """What a grouped row is identified by: every swept key but the seeds."""
    return [k for k in swept_keys(rows) if k not in SEED_KEYS]


def mean_sd(values: Iterable[float]) -> tuple[float, float, int]:
    """(mean, sample sd, n) over the finite values; sd is NaN below two values."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return math.nan, math.nan, 0
    sd = statistics.stdev(finite) if len(finite) > 1 else math.nan
    return statistics.fmean(finite), sd, len(finite)


def grouped(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """Finished trials grouped by :func:`group_keys`; each metric as ``(mean, sd, n)``.

    Also carries the mean measured ``label_fraction`` and ``labelled_patients`` of the group.
    """
    keys = group_keys(rows)
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        if row.get("status") != "done":
            continue
        groups.setdefault(tuple(_hashable(row.get(k)) for k in keys), []).append(row)
    out = []
    for ident, members in groups.items():
        entry: dict[str, Any] = dict(zip(keys, ident))
        entry["n"] = len(members)
        for fact in ("label_fraction", "labelled_patients"):
            entry[fact] = mean_sd(m.get(fact, math.nan) for m in members)[0]
        for metric in metrics:
            entry[metric] = mean_sd(m.get(metric, math.nan) for m in members)
        out.append(entry)
    return sorted(out, key=lambda e: (str(e.get("method", "")), e["label_fraction"], str(ident)))


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def metric_columns(rows: Sequence[Mapping[str, Any]], metric: str) -> list[str]:
    """The metrics worth tabulating: the sweep metric, then overall and per-class test metrics."""
    present = {k for row in rows for k in row}
    ordered = [metric] + sorted(k for k in present if k.startswith("test_") and k != "test_seconds")
    return [m for i, m in enumerate(ordered) if m in present and m not in ordered[:i]]


def fmt_mean_sd(stat: tuple[float, float, int], scale: float) -> str:
    """``81.3 ± 2.1`` (scaled), ``81.3`` for one value, ``–`` for none."""
    mean, sd, n = stat
    if n == 0:
        return "–"
    return f"{mean * scale:.1f}" + (f" ± {sd * scale:.1f}" if n > 1 else "")


def _shown(value: Any) -> str:
    """A swept key's value in a table cell: ``–`` when the trial did not set it."""
    return "–" if value is None else str(value)


def _scale(metric: str) -> float:
    return 100.0 if "dice" in metric else 1.0


def results_markdown(rows: Sequence[Mapping[str, Any]], metric: str, seconds: float | None = None,
                     command: str | None = None) -> str:
    """The grouped mean ± sd table, then one line per trial."""
    metrics = metric_columns(rows, metric)
    keys = group_keys(rows)
    lines = ["# Sweep results", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    if seconds is not None:
        lines += [f"Wall time: {seconds / 60:.1f} min for {len(rows)} trials.", ""]
    lines += [
        f"Grouped over labelled-subset draws ({', '.join(SEED_KEYS)}); mean ± sd over finished trials. "
        "Dice in %, HD95 in mm. `val_*` is the validation split (used for early stopping), `test_*` "
        "the test split (never used for selection).", "",
        "| " + " | ".join([*keys, "labelled (fraction)", "n", *metrics]) + " |",
        "|" + "---|" * (len(keys) + 2) + "---:|" * len(metrics),
    ]
    for entry in grouped(rows, metrics):
        labelled = f"{entry['labelled_patients']:.0f} ({entry['label_fraction'] * 100:.1f} %)"
        cells = [_shown(entry.get(k)) for k in keys] + [labelled, str(entry["n"])]
        cells += [fmt_mean_sd(entry[m], _scale(m)) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Trials", "", "| trial | status | " + " | ".join([*swept_keys(rows), TIME_ATTR, metric]) + " |",
              "|" + "---|" * (len(swept_keys(rows)) + 3) + "---:|"]
    for row in rows:
        value = row.get(metric)
        shown = "–" if value is None or not math.isfinite(float(value)) else f"{float(value) * _scale(metric):.1f}"
        cells = [str(row.get("trial")), str(row.get("status"))] + [_shown(row.get(k)) for k in swept_keys(rows)]
        lines.append("| " + " | ".join(cells + [str(row.get(TIME_ATTR, "")), shown]) + " |")
    errors = [row for row in rows if row.get("error")]
    if errors:
        lines += ["", "## Errors", ""] + [f"- {row['trial']}: {row['error']}" for row in errors]
    return "\n".join(lines) + "\n"


def write_results(sweep_dir: str, rows: Sequence[Mapping[str, Any]], *, metric: str,
                  seconds: float | None = None, command: str | None = None) -> list[str]:
    """Write ``results.csv``, ``results.md`` and the plot into ``sweep_dir``; returns the paths."""
    from action_ray.tuning.plots import PLOT_NAME, plot_dice_vs_label_fraction

    written = []
    for name, data in ((RESULTS_CSV, results_csv(rows)),
                       (RESULTS_MD, results_markdown(rows, metric, seconds, command)),
                       (PLOT_NAME, plot_dice_vs_label_fraction(rows, metric))):
        written.append(f"{sweep_dir}/{name}")
        write_file(written[-1], data)
    return written
