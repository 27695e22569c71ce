"""OME-NGFF 0.5 metadata, so that a standard OME-Zarr reader opens every case.

OME-NGFF 0.5 is the Zarr v3 edition of the format: its metadata lives under ``attributes["ome"]``
of a group's ``zarr.json`` with ``"version": "0.5"``. A case group is a single-scale
*multiscales image* whose only dataset is the ``image`` array (axes z, y, x in millimetres,
``scale`` = voxel spacing). The label is a *label image* under ``labels/label`` whose single
level ``0`` is the store's one and only label array; nothing is stored twice.
"""

from __future__ import annotations

from typing import Any

from action_ray.store.schema import AXES, IMAGE_ARRAY, LABEL_IMAGE_NAME

OME_VERSION = "0.5"

#: Colours for class ids 1.. (background 0 is transparent). Distinguishable on MR and CT.
_PALETTE = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
]


def _multiscale(name: str, dataset_path: str, spacing: tuple[float, float, float]) -> dict[str, Any]:
    return {
        "name": name,
        "axes": [{"name": axis, "type": "space", "unit": "millimeter"} for axis in AXES],
        "datasets": [{
            "path": dataset_path,
            "coordinateTransformations": [{"type": "scale", "scale": [float(s) for s in spacing]}],
        }],
        "type": "none",
        "metadata": {"description": "single resolution level written by action-ray"},
    }


def image_attrs(case_id: str, spacing: tuple[float, float, float]) -> dict[str, Any]:
    """``attributes["ome"]`` of a case group (an OME-NGFF image)."""
    return {"version": OME_VERSION, "multiscales": [_multiscale(case_id, IMAGE_ARRAY, spacing)]}


def labels_group_attrs() -> dict[str, Any]:
    """``attributes["ome"]`` of the ``labels`` group: the list of label images."""
    return {"version": OME_VERSION, "labels": [LABEL_IMAGE_NAME]}


def label_image_attrs(case_id: str, spacing: tuple[float, float, float],
                      classes: dict[int, str]) -> dict[str, Any]:
    """``attributes["ome"]`` of ``labels/label``: a multiscale image plus ``image-label``."""
    foreground = [c for c in sorted(classes) if c != 0]
    colors = [{"label-value": 0, "rgba": [0, 0, 0, 0]}] if 0 in classes else []
    colors += [{"label-value": c, "rgba": [*_PALETTE[i % len(_PALETTE)], 255]}
               for i, c in enumerate(foreground)]
    return {
        "version": OME_VERSION,
        "multiscales": [_multiscale(f"{case_id} {LABEL_IMAGE_NAME}", "0", spacing)],
        "image-label": {
            "colors": colors,
            "properties": [{"label-value": c, "class": classes[c]} for c in sorted(classes)],
            "source": {"image": "../../"},
        },
    }
