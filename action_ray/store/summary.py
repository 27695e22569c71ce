"""What a volume store holds, as one JSON-ready summary and as a table for people.

Only complete cases are counted; leftovers of interrupted writes are listed separately so they
are not mistaken for data. ``action-ray info`` prints these.
"""

from __future__ import annotations

from typing import Any

from action_ray.store.bulk import cyclic_gc_paused
from action_ray.urls import redact


def _min_median_max(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    import numpy as np

    return {"min": float(np.min(values)), "median": float(np.median(values)), "max": float(np.max(values))}


def summarise(store) -> dict[str, Any]:
    """Everything ``info`` prints, as one JSON-ready dictionary."""
    with cyclic_gc_paused():  # a few objects per case: per-case cost flat in the store size (bulk.py)
        return _summary(store)


def _summary(store) -> dict[str, Any]:
    cases = store.list_cases()
    splits: dict[str, dict[str, int]] = {}
    for case in cases:
        row = splits.setdefault(case.split, {"cases": 0, "labelled": 0, "unlabelled": 0})
        row["cases"] += 1
        row["labelled" if case.has_label else "unlabelled"] += 1
    voxels = {str(c): 0 for c in sorted(store.classes)}
    for case in cases:
        for cls, count in (case.label_counts or {}).items():
            voxels[cls] = voxels.get(cls, 0) + int(count)
    total = sum(voxels.values())
    fractions = {store.classes.get(int(c), c): (n / total if total else None) for c, n in voxels.items()}
    return {
        "store": redact(store.url),
        "dataset": {k: store.dataset_meta.get(k) for k in ("name", "modality", "layout", "classes",
                                                           "format_version", "created_by", "codec")},
        "n_cases": len(cases),
        "n_patients": len({c.patient_id for c in cases}),
        "n_labelled": sum(c.has_label for c in cases),
        "n_unlabelled": sum(not c.has_label for c in cases),
        "splits": dict(sorted(splits.items())),
        "shape": {axis: _min_median_max([c.shape[i] for c in cases]) for i, axis in enumerate("zyx")},
        "spacing_mm": {axis: _min_median_max([c.spacing[i] for c in cases]) for i, axis in enumerate("zyx")},
        "class_voxel_fractions": fractions,
        "incomplete_cases": store.incomplete_cases(),
        "cases": [
            {"id": c.case_id, "patient": c.patient_id, "split": c.split, "has_label": c.has_label,
             "shape": list(c.shape), "spacing": list(c.spacing), "label_counts": c.label_counts,
             "extra": c.extra}
            for c in cases
        ],
    }


def _range(stats: dict | None, fmt: str) -> str:
    if stats is None:
        return "-"
    return " / ".join(format(stats[k], fmt) for k in ("min", "median", "max"))


def format_table(summary: dict[str, Any]) -> str:
    ds = summary["dataset"]
    lines = [
        f"store     {summary['store']}",
        f"dataset   {ds['name']}  modality {ds['modality']}  layout {ds['layout']}",
        "classes   " + ", ".join(f"{k}={v}" for k, v in (ds["classes"] or {}).items()),
        f"cases     {summary['n_cases']} ({summary['n_labelled']} labelled, "
        f"{summary['n_unlabelled']} unlabelled) from {summary['n_patients']} patients",
    ]
    for split, row in summary["splits"].items():
        lines.append(f"  {split:<7} {row['cases']:>5} cases  {row['labelled']:>5} labelled  "
                     f"{row['unlabelled']:>5} unlabelled")
    lines.append("shape     (min / median / max)  " + "  ".join(
        f"{axis}: {_range(summary['shape'][axis], '.0f')}" for axis in "zyx"))
    lines.append("spacing mm (min / median / max)  " + "  ".join(
        f"{axis}: {_range(summary['spacing_mm'][axis], '.3g')}" for axis in "zyx"))
    fractions = summary["class_voxel_fractions"]
    if any(v is not None for v in fractions.values()):
        lines.append("class voxel fractions (labelled cases)  " + ", ".join(
            f"{name} {frac:.4f}" for name, frac in fractions.items() if frac is not None))
    if summary["incomplete_cases"]:
        ids = summary["incomplete_cases"]
        lines.append(f"incomplete {len(ids)} (interrupted writes, invisible to training; re-run ingest): "
                     + ", ".join(ids[:10]) + (" ..." if len(ids) > 10 else ""))
    return "\n".join(lines)
