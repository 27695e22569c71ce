"""Load one case from any filesystem and check it before anything reaches the store.

Every check raises :class:`~action_ray.errors.CaseError` naming the file and the reason, so the
run can skip that case, keep going, and list it in the final table. The checks are the ones that
silently poison training if missed: a truncated download, a label on a different grid (shape or
affine), label values the model has no class for, fractional labels from a resampling, NaN/Inf
intensities, and empty or constant volumes.

Reading the files, and their conversion to the store's ``(Z, Y, X)`` axis order, is
:mod:`action_ray.io.nifti`'s job; shapes in messages are the files' own ``(x, y, z)``, as a
NIfTI viewer shows them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from action_ray.errors import CaseError
from action_ray.io.checks import check_image
from action_ray.io.nifti import read_scan

#: Largest allowed displacement (mm), over the 8 corners of the volume, between the image and
#: label voxel grids. Float rounding of qform/sform stays far below; a half-voxel shift is far above.
AFFINE_TOLERANCE_MM = 0.01


@dataclass
class LoadedCase:
    """A validated case in store orientation, ready for ``VolumeStore.write_case``."""

    image: np.ndarray            # (Z, Y, X) float32
    label: np.ndarray | None     # (Z, Y, X) uint8, or None when unlabelled
    spacing: tuple[float, float, float]   # (sz, sy, sx) mm
    affine: list[list[float]]    # source NIfTI affine for voxel index (x, y, z)
    bytes_read: int              # size of the source files as stored (compressed if .gz)


def check_label(data: np.ndarray, path: str, classes: dict[int, str]) -> np.ndarray:
    """Integer values that are all declared classes; returns uint8 in the axis order given."""
    if data.dtype.kind == "f":
        if not np.isfinite(data).all():
            raise CaseError(f"{path}: label has NaN/Inf values")
        rounded = np.round(data)
        off = data != rounded
        if off.any():
            example = float(data[off].flat[0])
            raise CaseError(f"{path}: label has {int(off.sum())} non-integer values (e.g. {example}); "
                            "labels must be resampled with nearest neighbour")
        data = rounded
    elif data.dtype.kind not in "iub":
        raise CaseError(f"{path}: label dtype {data.dtype} is not numeric")
    low, high = data.min(), data.max()
    declared = sorted(classes)
    if low < 0 or high > 255:
        raise CaseError(f"{path}: label values span [{low}, {high}], outside the declared classes {declared}")
    label = data.astype(np.uint8, copy=False)
    present = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
    unknown = [int(v) for v in present if int(v) not in classes]
    if unknown:
        raise CaseError(f"{path}: label values {unknown} are not declared classes {declared}; "
                        "fix the label or the recipe's classes")
    return label


def grid_displacement_mm(a: np.ndarray, b: np.ndarray, shape: tuple[int, ...]) -> float:
    """Largest distance (mm) between where two affines put the corners of a ``shape`` grid.

    ``shape`` is the file's (x, y, z): the affines map NIfTI voxel indices.
    """
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    return float(np.abs(corners @ (np.asarray(a) - np.asarray(b)).T)[:, :3].max())


def load_case(fs, image_path: str, label_path: str | None, classes: dict[int, str],
              affine_tolerance_mm: float = AFFINE_TOLERANCE_MM) -> LoadedCase:
    """Read, validate and reorient one (image, label) pair; raise CaseError on any problem."""
    image_scan = read_scan(fs, image_path, dtype=np.float32)
    image = check_image(image_scan.voxels, image_path)
    spacing = image_scan.spacing()
    label = None
    n_label = 0
    if label_path is not None:
        label_scan = read_scan(fs, label_path)
        n_label = label_scan.bytes_read
        if label_scan.file_shape != image_scan.file_shape:
            raise CaseError(f"{label_path}: label shape {label_scan.file_shape} differs from image shape "
                            f"{image_scan.file_shape} ({image_path})")
        shift = grid_displacement_mm(image_scan.affine, label_scan.affine, image_scan.file_shape)
        if shift > affine_tolerance_mm:
            raise CaseError(f"{label_path}: label affine differs from the image's ({image_path}): grids "
                            f"disagree by up to {shift:.3g} mm (tolerance {affine_tolerance_mm} mm)")
        label = check_label(label_scan.voxels, label_path, classes)
    return LoadedCase(
        image=image,
        label=label,
        spacing=spacing,
        affine=image_scan.affine.tolist(),
        bytes_read=image_scan.bytes_read + n_label,
    )
