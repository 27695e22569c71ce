"""Evaluation outputs: ``metrics.csv`` (case × class rows), ``summary.json`` and ``summary.md``.

The numbers come from :func:`action_ray.metrics.case_metrics` and :func:`~action_ray.metrics.summarise`
unchanged; this module only names the rows (case, patient, class name), chooses the file
formats, and writes them to a local directory or an ``s3://`` prefix. Undefined values (NaN:
a distance with an empty mask under the ``strict`` convention) are empty cells in the CSV and
``null`` in the JSON, which strict JSON readers accept.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from action_ray.metrics import case_metrics, summarise
from action_ray.runs.files import write_file
from action_ray.runs.layout import join

#: Columns of ``metrics.csv``, in order.
CSV_COLUMNS = (
    "case", "patient", "class", "class_name",
    "dice", "jaccard", "hd95_mm", "asd_mm", "assd_mm", "hd95_vox", "asd_vox", "assd_vox",
    "pred_empty", "gt_empty", "intersection", "pred_voxels", "gt_voxels",
)
METRICS_CSV = "metrics.csv"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
#: Metrics shown in the markdown table: (key, header, scale).
_TABLE = (("dice", "Dice %", 100.0), ("jaccard", "Jaccard %", 100.0), ("hd95_mm", "HD95 mm", 1.0),
          ("asd_mm", "ASD mm", 1.0), ("hd95_vox", "HD95 vox", 1.0), ("asd_vox", "ASD vox", 1.0),
          ("pooled_dice", "pooled Dice %", 100.0))


def case_rows(
    case_id: str,
    patient_id: str,
    pred: np.ndarray,
    gt: np.ndarray,
    classes: Mapping[int, str],
    spacing: Sequence[float] | None,
    empty: str = "strict",
) -> list[dict[str, Any]]:
    """One row per foreground class of one case: :func:`case_metrics` plus case, patient, class name.

    pred, gt: integer label maps (Z, Y, X). classes: the classes to score, id -> name
    (background left out by the caller). spacing: (sz, sy, sx) in mm.
    """
    rows = case_metrics(pred, gt, classes=sorted(classes), spacing=spacing, empty=empty)  # type: ignore[arg-type]
    return [{"case": case_id, "patient": patient_id, **row, "class_name": classes[int(row["class"])]}
            for row in rows]


def _cell(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    return value


def metrics_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """CSV text of the rows with :data:`CSV_COLUMNS` (NaN -> empty cell, flags as 0/1)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _cell(row.get(key)) for key in CSV_COLUMNS})
    return buffer.getvalue()


def json_safe(value: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python, int dict keys -> str, recursively."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def build_summary(
    rows: Sequence[Mapping[str, Any]], classes: Mapping[int, str], info: Mapping[str, Any]
) -> dict[str, Any]:
    """Means per class and overall (:func:`summarise`), class names, counts and run facts.

    info: what was evaluated (checkpoint, split, store, empty convention, skipped cases, ...),
    copied into the summary as is.
    """
    stats = summarise(rows) if rows else {"per_class": {}, "overall": {"n_classes": 0}}
    per_class = {}
    for c, entry in stats["per_class"].items():
        per_class[str(c)] = {"name": classes.get(int(c), str(c)), **entry}
    cases = sorted({str(row["case"]) for row in rows})
    patients = sorted({str(row["patient"]) for row in rows})
    summary = {
        **dict(info),
        "n_cases": len(cases),
        "n_patients": len(patients),
        "n_rows": len(rows),
        "classes": {str(c): name for c, name in sorted(classes.items())},
        "per_class": per_class,
        "overall": stats["overall"],
    }
    return json_safe(summary)


def _fmt(value: Any, scale: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value * scale:.2f}"


def summary_markdown(summary: Mapping[str, Any]) -> str:
    """A markdown page: what was evaluated, then one table row per class and the mean."""
    lines = [
        f"# Evaluation: {summary.get('split', '?')} split",
        "",
        f"- checkpoint: `{summary.get('checkpoint', '?')}` (stage {summary.get('stage', '?')}, "
        f"step {summary.get('step', '?')}, selection: {summary.get('checkpoint_choice', '?')})",
        f"- store: `{summary.get('store', '?')}`",
        *([f"- training curves: `{summary['training_curves']}`"] if summary.get("training_curves") else []),
        f"- cases: {summary.get('n_cases', 0)} ({summary.get('n_patients', 0)} patients); "
        f"skipped unlabelled: {len(summary.get('skipped_unlabelled') or [])}",
        *(["- **left out, unreadable**: " + "; ".join(f"`{u['case_id']}` ({u['error']})"
                                                      for u in summary["unreadable_cases"])]
          if summary.get("unreadable_cases") else []),
        f"- empty-mask convention: `{summary.get('empty', '?')}`; distances in mm use the stored "
        "spacing, voxel distances count one voxel per axis step",
        "",
        "| class | " + " | ".join(header for _, header, _ in _TABLE) + " | cases | excluded (HD95) |",
        "|---|" + "---:|" * (len(_TABLE) + 2),
    ]
    for c, entry in summary.get("per_class", {}).items():
        excluded = (entry.get("excluded") or {}).get("hd95_mm", 0) or 0
        cells = " | ".join(_fmt(entry.get(key), scale) for key, _, scale in _TABLE)
        lines.append(f"| {c} {entry.get('name', '')} | {cells} | {entry.get('n_cases', 0)} | {excluded} |")
    overall = summary.get("overall", {})
    cells = " | ".join(_fmt(overall.get(key), scale) for key, _, scale in _TABLE)
    lines.append(f"| **mean** | {cells} | {summary.get('n_cases', 0)} | |")
    lines += ["", "Means over cases per class, then over classes; NaN distances (empty masks under "
              "`strict`) are left out and counted in *excluded*. Pooled Dice sums voxels over cases.", ""]
    return "\n".join(lines)


def write_reports(
    out_dir: str, rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any],
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """``metrics.csv``, ``summary.json`` and ``summary.md`` in ``out_dir`` (local or remote)."""
    write_file(join(out_dir, METRICS_CSV), metrics_csv(rows), storage_options)
    write_file(join(out_dir, SUMMARY_JSON), json.dumps(summary, indent=2, allow_nan=False) + "\n", storage_options)
    write_file(join(out_dir, SUMMARY_MD), summary_markdown(summary), storage_options)
