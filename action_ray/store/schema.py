"""What a volume store contains: key layout, per-case metadata, and their validation.

The layout is the contract between ingest (writer) and the data layer (reader); it is kept
in one module so that the on-disk names and the JSON fields have exactly one definition::

    <store>/zarr.json                      root group, attrs["action_ray"] = dataset metadata
    <store>/cases/zarr.json                plain group holding one child group per case
    <store>/cases/<id>/zarr.json           case group: attrs["action_ray"] (per-case metadata,
                                           ``complete`` flag) and attrs["ome"] (OME-NGFF 0.5)
    <store>/cases/<id>/image               float32 (Z, Y, X); slice chunking: one shard object
                                           c/0/0/0 per up to 16 MiB of slices (codecs.py)
    <store>/cases/<id>/labels/zarr.json    OME-NGFF "labels" group (only for labelled cases)
    <store>/cases/<id>/labels/label/0      uint8 (Z, Y, X): THE label array (no second copy)
    <store>/complete/<id>.json             completion marker: the case metadata, written last
    <store>/index.json                     optional listing cache (see catalog.py)

A case is complete exactly when its marker ``complete/<id>.json`` exists. Writing goes: drop
the marker, remove any leftover, push the case's chunks and inner documents (encoded in memory
with the codecs zarr names: store/case_objects.py), then its ``zarr.json`` with ``complete: true`` (for people browsing the Zarr tree), and
last PUT the marker (atomic: one S3 object, or a rename on local disks).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from action_ray.errors import CaseError, StoreError

#: Bumped when a reader of an older store would misread a newer one.
FORMAT_VERSION = 1
#: Attribute key under which action-ray keeps its own metadata (root and case groups).
ATTRS_KEY = "action_ray"
CASES_GROUP = "cases"
IMAGE_ARRAY = "image"
#: The label array is the single-scale level of the OME-NGFF label image ``labels/label``.
LABELS_GROUP = "labels"
LABEL_IMAGE_NAME = "label"
LABEL_ARRAY = f"{LABELS_GROUP}/{LABEL_IMAGE_NAME}/0"
AXES = ("z", "y", "x")
SPLITS = ("train", "val", "test")
#: Labels are stored as uint8. The training stream marks a row that has no label with 255
#: (``data.labels.NO_LABEL_UINT8``), so a class index must stay below it: 0..254.
NO_LABEL_UINT8 = 255
MAX_CLASS_INDEX = NO_LABEL_UINT8 - 1

_CASE_ID = re.compile(r"[A-Za-z0-9_.\-]+")


def check_case_id(case_id: str) -> str:
    """Return ``case_id`` if it is a safe key segment, else raise :class:`StoreError`."""
    if not isinstance(case_id, str) or not _CASE_ID.fullmatch(case_id) \
            or case_id in (".", "..", "zarr.json"):
        raise StoreError(
            f"invalid case id {case_id!r}: use letters, digits, '_', '.' and '-' only "
            "(e.g. 'patient001_frame01')"
        )
    return case_id


def case_key(case_id: str, member: str | None = None) -> str:
    """Store-relative key of a case group (or of one of its members)."""
    key = f"{CASES_GROUP}/{check_case_id(case_id)}"
    return f"{key}/{member}" if member else key


@dataclass
class CaseMeta:
    """What the writer knows about a case before its voxels are analysed.

    ``spacing`` is (sz, sy, sx) in millimetres, in the order of the array axes. ``affine`` is
    the source NIfTI affine (for voxel index (i, j, k) = (x, y, z)), kept so predictions can be
    written back in the scanner frame. ``extra`` holds layout-specific facts (ACDC frame and
    phase, MSD task, ...) and must be JSON-serialisable.
    """

    case_id: str
    patient_id: str
    split: str
    spacing: tuple[float, float, float]
    affine: list[list[float]]
    source: dict
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class CaseInfo:
    """A complete case as readers see it (everything but the voxels)."""

    case_id: str
    patient_id: str
    split: str
    has_label: bool
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: list[list[float]]
    source: dict
    stats: dict  # action_ray.io.normalise.intensity_stats of the image
    label_counts: dict | None
    extra: dict
    #: chunks holding data per array (``{"image": n, "label": m}``), recorded at write time so that
    #: a chunk deleted later is detectable (`Store.verify_case`); None in stores written before
    stored_chunks: dict | None = None


def validate_meta(meta: CaseMeta) -> None:
    """Raise :class:`CaseError` naming the case and field if ``meta`` cannot be stored."""
    check_case_id(meta.case_id)
    where = f"case {meta.case_id!r}"
    if not isinstance(meta.patient_id, str) or not meta.patient_id:
        raise CaseError(f"{where}: patient_id must be a non-empty string, got {meta.patient_id!r}")
    if meta.split not in SPLITS:
        raise CaseError(f"{where}: split must be one of {SPLITS}, got {meta.split!r}")
    spacing = tuple(meta.spacing)
    if len(spacing) != 3 or not all(isinstance(s, (int, float, np.floating, np.integer)) for s in spacing) \
            or not all(math.isfinite(float(s)) and float(s) > 0 for s in spacing):
        raise CaseError(
            f"{where}: spacing must be three positive finite numbers (sz, sy, sx) in mm, got {meta.spacing!r}"
        )
    affine = np.asarray(meta.affine, dtype=float)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise CaseError(f"{where}: affine must be a finite 4x4 matrix, got shape {affine.shape}")
    for name, value in (("source", meta.source), ("extra", meta.extra)):
        if not isinstance(value, dict):
            raise CaseError(f"{where}: {name} must be a dict, got {type(value).__name__}")
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise CaseError(f"{where}: {name} is not JSON-serialisable ({exc})") from None


def case_attrs(meta: CaseMeta, shape: tuple[int, int, int], stats: dict,
               label_counts: dict | None, *, complete: bool) -> dict[str, Any]:
    """The ``attrs["action_ray"]`` document of a case group."""
    return {
        "format_version": FORMAT_VERSION,
        "case_id": meta.case_id,
        "patient_id": meta.patient_id,
        "split": meta.split,
        "has_label": label_counts is not None,
        "shape": [int(n) for n in shape],
        "spacing": [float(s) for s in meta.spacing],
        "affine": [[float(v) for v in row] for row in np.asarray(meta.affine, dtype=float)],
        "source": {"image": meta.source.get("image"), "label": meta.source.get("label"),
                   **{k: v for k, v in meta.source.items() if k not in ("image", "label")}},
        "stats": stats,
        "label_counts": label_counts,
        "extra": dict(meta.extra),
        "complete": bool(complete),
    }


def info_from_attrs(attrs: dict) -> CaseInfo:
    """Build a :class:`CaseInfo` from a complete case group's attributes."""
    doc = attrs[ATTRS_KEY]
    return CaseInfo(
        case_id=doc["case_id"],
        patient_id=doc["patient_id"],
        split=doc["split"],
        has_label=bool(doc["has_label"]),
        shape=tuple(int(n) for n in doc["shape"]),
        spacing=tuple(float(s) for s in doc["spacing"]),
        affine=[list(map(float, row)) for row in doc["affine"]],
        source=dict(doc.get("source") or {}),
        stats=dict(doc.get("stats") or {}),
        label_counts=None if doc.get("label_counts") is None else dict(doc["label_counts"]),
        extra=dict(doc.get("extra") or {}),
        stored_chunks=None if doc.get("stored_chunks") is None else {
            str(k): int(v) for k, v in doc["stored_chunks"].items()},
    )


def label_voxel_counts(counts: np.ndarray, classes: dict[int, str]) -> dict[str, int]:
    """Voxels per class id (JSON keys are strings) from a label's ``np.bincount`` covering
    every class; every store class is listed, zeros included."""
    return {str(c): int(counts[c]) for c in sorted(classes)}


def dataset_attrs(*, name: str, modality: str, layout: str, classes: dict[int, str],
                  created_by: str, codec: str) -> dict[str, Any]:
    """The root ``attrs["action_ray"]`` document."""
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "modality": modality,
        "layout": layout,
        "classes": {str(int(k)): str(v) for k, v in sorted(classes.items())},
        "created_by": created_by,
        "codec": codec,
    }


def classes_from_attrs(doc: dict) -> dict[int, str]:
    return {int(k): v for k, v in doc["classes"].items()}
