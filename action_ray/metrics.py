"""Segmentation metrics: Dice, Jaccard, HD95 and ASD, in millimetres and in voxels.

Why this module exists: published semi-supervised segmentation results (ACTION, SSL4MIS and the
papers they compare with) are computed with medpy's ``binary`` metrics *without voxel spacing*,
so their distances are in voxel units, and slices 5-10 mm apart count as 1. action-ray reports
both: voxel units for comparison with papers, millimetres for users. The definitions match
medpy 0.5 exactly (see ``docs/metrics.md`` and ``tests/test_metrics_reference.py``):

* a mask's *surface* is the mask minus its binary erosion with the connectivity-1 structuring
  element; voxels on the array border count as surface (erosion treats outside as background);
* the *directed surface distances* from A to B are, for every surface voxel of A, the Euclidean
  distance (scaled by ``spacing``) to the nearest surface voxel of B;
* **HD95** is the 95th percentile (linear interpolation) of the *union* of both directed sets;
* **ASD** is the mean of the directed distances from the prediction to the ground truth. It is
  asymmetric, like medpy's ``asd``; **ASSD** (the symmetric one, medpy 0.5's ``assd``) is the mean
  of the union of both directed sets, so the larger surface weighs more (medpy 0.4 and some
  papers average the two directed means instead).

``spacing`` is always in the order of the array axes; for a store volume that is (sz, sy, sx) in
mm, as in :class:`action_ray.store.schema.CaseMeta`. Surfaces and distances are computed with
``scipy.ndimage`` on the bounding box of both masks (exact, see :func:`_crop_to_union`): no
Python loop over voxels.

Empty masks have no surface, so distances are undefined; what to report is a convention chosen
with ``empty=`` (see :data:`EMPTY_CONVENTIONS` and ``docs/metrics.md``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from scipy import ndimage

__all__ = [
    "EMPTY_CONVENTIONS",
    "EmptyConvention",
    "asd",
    "assd",
    "binary_metrics",
    "case_metrics",
    "dice",
    "hd95",
    "jaccard",
    "summarise",
    "surface_distances",
]

EmptyConvention = Literal["strict", "action"]

EMPTY_CONVENTIONS: dict[str, str] = {
    "strict": (
        "both empty -> dice 1, jaccard 1, hd95 0, asd 0, assd 0; exactly one empty -> dice 0, "
        "jaccard 0, distances NaN (no surface to measure; excluded from means and counted)"
    ),
    "action": (
        "ACTION / SSL4MIS protocol (method.md §6): pred non-empty and gt empty -> "
        "(dice, jaccard, hd95, asd) = (1, 1, 0, 0); pred empty (whatever gt) -> (0, 0, 0, 0); "
        "assd follows asd"
    ),
}

_DISTANCE_KEYS = ("hd95", "asd", "assd")


# --------------------------------------------------------------------------- validation


def _as_binary(mask: np.ndarray, name: str) -> np.ndarray:
    """Return ``mask`` as a bool array; raise if it holds anything but 0/1 (or False/True)."""
    array = np.asarray(mask)
    if array.dtype == bool:
        return array
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{name}: expected a binary mask (bool or 0/1 numbers), got dtype {array.dtype}")
    outside = (array != 0) & (array != 1)
    if outside.any():
        bad = np.unique(array[outside])[:5].tolist()
        raise ValueError(
            f"{name}: expected a binary mask (bool or 0/1), found values {bad}; for a label map "
            f"pass `labels == c` for one class, or use case_metrics(..., classes=[...])"
        )
    return array.astype(bool)


def _check_pair(pred: np.ndarray, gt: np.ndarray, what: str) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"{what}: pred has shape {pred.shape} but gt has shape {gt.shape}; they must match")
    if pred.ndim < 1:
        raise ValueError(f"{what}: expected arrays with at least one axis (2-D or 3-D), got a scalar")


def _check_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...] | None:
    """Validate ``spacing`` against the number of array axes; ``None`` means voxel units."""
    if spacing is None:
        return None
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ValueError(f"spacing: expected {ndim} positive numbers (one per array axis), got {spacing!r}") from None
    if len(values) != ndim:
        raise ValueError(
            f"spacing: expected {ndim} values (one per array axis, in array-axis order, e.g. "
            f"(sz, sy, sx) for a volume), got {len(values)}: {spacing!r}"
        )
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing: every value must be a positive finite number, got {spacing!r}")
    return values


def _check_empty(empty: str) -> None:
    if empty not in EMPTY_CONVENTIONS:
        raise ValueError(f"empty: expected one of {sorted(EMPTY_CONVENTIONS)}, got {empty!r}")


# --------------------------------------------------------------------------- overlap


def _overlap_counts(p: np.ndarray, g: np.ndarray) -> tuple[int, int, int]:
    """(|P∩G|, |P|, |G|) of two bool masks: all that Dice, Jaccard and pooled Dice need."""
    return int(np.count_nonzero(p & g)), int(np.count_nonzero(p)), int(np.count_nonzero(g))


def _dice_from(intersection: int, pred_voxels: int, gt_voxels: int) -> float:
    total = pred_voxels + gt_voxels
    return 2.0 * intersection / total if total else 1.0


def _jaccard_from(intersection: int, pred_voxels: int, gt_voxels: int) -> float:
    union = pred_voxels + gt_voxels - intersection
    return intersection / union if union else 1.0


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient 2|P∩G| / (|P|+|G|) of two binary masks of equal shape (any ndim).

    Both masks empty gives 1.0 (nothing to find, nothing found; medpy 0.5's ``dc``);
    :func:`binary_metrics` applies the chosen empty-mask convention on top.
    """
    p, g = _as_binary(pred, "pred"), _as_binary(gt, "gt")
    _check_pair(p, g, "dice")
    return _dice_from(*_overlap_counts(p, g))


def jaccard(pred: np.ndarray, gt: np.ndarray) -> float:
    """Jaccard index |P∩G| / |P∪G| of two binary masks of equal shape.

    Both masks empty gives 1.0 (medpy 0.5's ``jc``).
    """
    p, g = _as_binary(pred, "pred"), _as_binary(gt, "gt")
    _check_pair(p, g, "jaccard")
    return _jaccard_from(*_overlap_counts(p, g))


# --------------------------------------------------------------------------- distances


def _crop_to_union(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union.

    Exact for surfaces and distances: a mask voxel on a face of the box has its outward
    neighbour outside the union, so it is surface with or without the crop (erosion treats the
    outside of the array as background), and the nearest surface voxel of the other mask always
    lies inside the box. It makes a small lesion in a 512x512x400 CT cost what its box costs.
    """
    union = a | b
    box = []
    for axis in range(union.ndim):
        others = tuple(k for k in range(union.ndim) if k != axis)
        occupied = np.flatnonzero(union.any(axis=others))
        if occupied.size == 0:
            return a, b
        box.append(slice(int(occupied[0]), int(occupied[-1]) + 1))
    return a[tuple(box)], b[tuple(box)]


def _surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: the mask minus its erosion by the connectivity-1 structuring element."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, iterations=1)


def _directed(from_surface: np.ndarray, to_surface: np.ndarray, spacing: tuple[float, ...] | None) -> np.ndarray:
    """Distances from each voxel of ``from_surface`` to the nearest voxel of ``to_surface``."""
    distance_to = ndimage.distance_transform_edt(~to_surface, sampling=spacing)
    return distance_to[from_surface]


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Directed surface distances from mask ``a`` to mask ``b`` (medpy's ``__surface_distances``).

    a, b: binary masks of equal shape (2-D or 3-D, any ndim works).
    spacing: voxel size per array axis (mm); ``None`` gives voxel units.
    Returns a float64 vector with one entry per surface voxel of ``a`` (C order): the distance
    to the nearest surface voxel of ``b``, in the units of ``spacing``. Raises ``ValueError`` if
    either mask is empty (an empty mask has no surface).
    """
    p, g = _as_binary(a, "a"), _as_binary(b, "b")
    _check_pair(p, g, "surface_distances")
    sampling = _check_spacing(spacing, p.ndim)
    if not p.any() or not g.any():
        raise ValueError(
            f"surface_distances: {'a' if not p.any() else 'b'} is empty; distances are undefined "
            f"(binary_metrics applies an empty-mask convention instead)"
        )
    p, g = _crop_to_union(p, g)
    return _directed(_surface(p), _surface(g), sampling)


def _distance_summary(pred_to_gt: np.ndarray, gt_to_pred: np.ndarray) -> dict[str, float]:
    """HD95 and ASSD (over the union of both directed sets) and ASD (pred -> gt only)."""
    both = np.concatenate([pred_to_gt, gt_to_pred])
    return {
        "hd95": float(np.percentile(both, 95)),
        "asd": float(pred_to_gt.mean()),
        "assd": float(both.mean()),
    }


def _distances_in(
    p: np.ndarray, g: np.ndarray, samplings: Sequence[tuple[float, ...] | None]
) -> list[dict[str, float]]:
    """Distance summaries of two non-empty, already cropped masks for each sampling (one surface pass)."""
    p_surface, g_surface = _surface(p), _surface(g)
    return [
        _distance_summary(_directed(p_surface, g_surface, s), _directed(g_surface, p_surface, s))
        for s in samplings
    ]


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """95th percentile Hausdorff distance, medpy's definition, in the units of ``spacing``.

    The 95th percentile (linear interpolation) of the union of the pred->gt and gt->pred surface
    distances. Raises ``ValueError`` if either mask is empty.
    """
    return _distance_summary(surface_distances(pred, gt, spacing), surface_distances(gt, pred, spacing))["hd95"]


def asd(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """Average surface distance from ``pred`` to ``gt`` (directed, medpy's ``asd``), units of ``spacing``.

    Asymmetric: ``asd(p, g) != asd(g, p)`` in general; see :func:`assd`. Raises ``ValueError``
    if either mask is empty.
    """
    return float(surface_distances(pred, gt, spacing).mean())


def assd(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """Average symmetric surface distance, medpy 0.5's ``assd``, in the units of ``spacing``.

    The mean of the union of the pred->gt and gt->pred surface distances (each surface voxel of
    either mask counts once), not the mean of the two directed means. Raises ``ValueError`` if
    either mask is empty.
    """
    return _distance_summary(surface_distances(pred, gt, spacing), surface_distances(gt, pred, spacing))["assd"]


# --------------------------------------------------------------------------- conventions


def _empty_case(pred_empty: bool, gt_empty: bool, empty: str) -> dict[str, float]:
    """Metric values for a pair in which at least one mask is empty, under convention ``empty``."""
    if empty == "action":
        if pred_empty:
            return {"dice": 0.0, "jaccard": 0.0, "hd95": 0.0, "asd": 0.0, "assd": 0.0}
        return {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0, "assd": 0.0}
    if pred_empty and gt_empty:
        return {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0, "assd": 0.0}
    return {"dice": 0.0, "jaccard": 0.0, "hd95": math.nan, "asd": math.nan, "assd": math.nan}


def binary_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float] | None = None,
    empty: EmptyConvention = "strict",
) -> dict[str, float]:
    """Dice, Jaccard, HD95, ASD and ASSD of one binary prediction against its ground truth.

    pred, gt: binary masks (bool or 0/1) of equal shape, 2-D (H, W) or 3-D (D, H, W).
    spacing: voxel size per array axis, e.g. the store's (sz, sy, sx) in mm; distances then
        come out in mm. ``None`` (or all ones) gives voxel units, as in the published protocol.
    empty: what to report when a mask is empty (no surface, so no distance):

        * ``"strict"`` (default): both empty -> dice = jaccard = 1, distances 0 (a correct
          "absent"); exactly one empty -> dice = jaccard = 0 and hd95/asd/assd = NaN, which
          :func:`summarise` excludes from means and counts.
        * ``"action"``: the ACTION / SSL4MIS protocol, for comparison with papers: pred
          non-empty and gt empty -> (dice, jaccard, hd95, asd) = (1, 1, 0, 0); pred empty
          (whatever gt) -> (0, 0, 0, 0).

    Returns ``{"dice", "jaccard", "hd95", "asd", "assd"}`` as floats; ``asd`` is directed
    (pred -> gt), ``assd`` symmetric (mean over both surfaces' distances).
    """
    p, g = _as_binary(pred, "pred"), _as_binary(gt, "gt")
    _check_pair(p, g, "binary_metrics")
    sampling = _check_spacing(spacing, p.ndim)
    _check_empty(empty)
    return _pair_metrics(p, g, [sampling], empty)[1][0]


def _pair_metrics(
    p: np.ndarray, g: np.ndarray, samplings: Sequence[tuple[float, ...] | None], empty: str
) -> tuple[tuple[int, int, int], list[dict[str, float]]]:
    """:func:`binary_metrics` on validated masks for several samplings, plus the overlap counts.

    Everything is computed on the union's bounding box; overlap once, surfaces once.
    """
    p, g = _crop_to_union(p, g)
    counts = _overlap_counts(p, g)
    _, pred_voxels, gt_voxels = counts
    if pred_voxels == 0 or gt_voxels == 0:
        return counts, [_empty_case(pred_voxels == 0, gt_voxels == 0, empty) for _ in samplings]
    overlap = {"dice": _dice_from(*counts), "jaccard": _jaccard_from(*counts)}
    return counts, [{**overlap, **distances} for distances in _distances_in(p, g, samplings)]


def case_metrics(
    pred_labels: np.ndarray,
    gt_labels: np.ndarray,
    classes: Sequence[int],
    spacing: Sequence[float] | None,
    empty: EmptyConvention = "strict",
) -> list[dict[str, Any]]:
    """Per-class metrics of one case's label maps, with distances in both mm and voxels.

    pred_labels, gt_labels: integer label maps of equal shape, 2-D (H, W) or 3-D (D, H, W).
    classes: the label values to score, e.g. ``[1, 2, 3]`` (background is usually left out).
    spacing: voxel size per array axis in mm, e.g. the store's (sz, sy, sx); ``None`` if unknown,
        in which case the ``*_mm`` values are NaN (voxel values are still computed).
    empty: empty-mask convention, see :func:`binary_metrics`.

    Returns one dict per class, in the order of ``classes``, with keys ``class``, ``dice``,
    ``jaccard``, ``hd95_mm``, ``asd_mm``, ``assd_mm``, ``hd95_vox``, ``asd_vox``, ``assd_vox``,
    ``pred_empty``, ``gt_empty`` and the voxel counts ``intersection``, ``pred_voxels``,
    ``gt_voxels`` (for pooled, dataset-level Dice in :func:`summarise`).
    """
    pred_labels, gt_labels = np.asarray(pred_labels), np.asarray(gt_labels)
    for name, labels in (("pred_labels", pred_labels), ("gt_labels", gt_labels)):
        if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
            raise ValueError(f"{name}: expected an integer label map, got dtype {labels.dtype}")
    _check_pair(pred_labels, gt_labels, "case_metrics")
    sampling = _check_spacing(spacing, pred_labels.ndim)
    _check_empty(empty)
    class_list = [int(c) for c in classes]
    if not class_list:
        raise ValueError("classes: expected at least one label value to score, e.g. [1, 2, 3]")
    if len(set(class_list)) != len(class_list):
        raise ValueError(f"classes: each label value must appear once, got {list(classes)}")

    rows = []
    for c in class_list:
        p, g = pred_labels == c, gt_labels == c
        samplings = [None] if sampling is None else [sampling, None]
        (intersection, pred_voxels, gt_voxels), values = _pair_metrics(p, g, samplings, empty)
        voxel = values[-1]
        mm = values[0] if sampling is not None else dict.fromkeys(_DISTANCE_KEYS, math.nan)
        rows.append({
            "class": c,
            "dice": voxel["dice"],
            "jaccard": voxel["jaccard"],
            **{f"{k}_mm": mm[k] for k in _DISTANCE_KEYS},
            **{f"{k}_vox": voxel[k] for k in _DISTANCE_KEYS},
            "pred_empty": pred_voxels == 0,
            "gt_empty": gt_voxels == 0,
            "intersection": intersection,
            "pred_voxels": pred_voxels,
            "gt_voxels": gt_voxels,
        })
    return rows


# --------------------------------------------------------------------------- summary

_SUMMARY_KEYS = ("dice", "jaccard", "hd95_mm", "asd_mm", "assd_mm", "hd95_vox", "asd_vox", "assd_vox")


def _nan_mean(values: Iterable[float]) -> tuple[float, int]:
    """Mean of the non-NaN values and how many were NaN (mean is NaN if all are)."""
    array = np.asarray(list(values), dtype=float)
    kept = array[~np.isnan(array)]
    return (float(kept.mean()) if kept.size else math.nan), int(array.size - kept.size)


def summarise(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Means per class and overall, NaN-aware, with pooled (dataset-level) Dice per class.

    rows: the concatenated output of :func:`case_metrics` over cases (each row has ``class``).

    Per class: the mean of each metric over cases, ignoring NaN (undefined distances under the
    ``strict`` convention, or mm values without spacing); ``excluded`` counts the ignored cases
    per metric; ``n_cases``, ``n_pred_empty``, ``n_gt_empty`` count rows. ``pooled_dice`` =
    2 Σ|P∩G| / (Σ|P| + Σ|G|) over all cases: defined even when most cases lack the class
    (tumour-free volumes), and NaN only if no case has the class in pred or gt.

    Overall: the mean over classes of the per-class means (the published protocol: average over
    cases per class, then over classes), ignoring classes whose mean is NaN, and the mean of
    the pooled Dice values the same way.

    Returns ``{"per_class": {c: {...}}, "overall": {...}}``.
    """
    by_class: dict[int, list[Mapping[str, Any]]] = {}
    for row in rows:
        if "class" not in row:
            raise ValueError(
                f"summarise: each row needs a 'class' key (rows come from case_metrics), got {sorted(row)}"
            )
        by_class.setdefault(int(row["class"]), []).append(row)

    per_class: dict[int, dict[str, Any]] = {}
    for c, class_rows in sorted(by_class.items()):
        entry: dict[str, Any] = {"n_cases": len(class_rows)}
        excluded: dict[str, int] = {}
        for key in _SUMMARY_KEYS:
            if all(key in row for row in class_rows):
                entry[key], excluded[key] = _nan_mean(row[key] for row in class_rows)
        entry["excluded"] = excluded
        entry["n_pred_empty"] = sum(bool(row.get("pred_empty", False)) for row in class_rows)
        entry["n_gt_empty"] = sum(bool(row.get("gt_empty", False)) for row in class_rows)
        if all(k in row for row in class_rows for k in ("intersection", "pred_voxels", "gt_voxels")):
            denominator = sum(int(row["pred_voxels"]) + int(row["gt_voxels"]) for row in class_rows)
            numerator = 2 * sum(int(row["intersection"]) for row in class_rows)
            entry["pooled_dice"] = numerator / denominator if denominator else math.nan
        per_class[c] = entry

    overall: dict[str, Any] = {"n_classes": len(per_class)}
    for key in (*_SUMMARY_KEYS, "pooled_dice"):
        values = [entry[key] for entry in per_class.values() if key in entry]
        if values:
            overall[key], overall_excluded = _nan_mean(values)
            if overall_excluded:
                overall.setdefault("classes_excluded", {})[key] = overall_excluded
    return {"per_class": per_class, "overall": overall}
