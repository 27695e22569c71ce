"""Load one case from any filesystem and check it before anything reaches the store.

Every check raises :class:`~action_ray.errors.CaseError` naming the file and the reason, so the
run can skip that case, keep going, and list it in the final table. The checks are the ones that
silently poison training if missed: a truncated download, a label on a different grid (shape or
affine), label values the model has no class for, fractional labels from a resampling, NaN/Inf
intensities, and empty or constant volumes.

Arrays leave this module in the store's orientation: ``image[z]`` is the axial slice
``nifti_data[:, :, z].T``, i.e. the NIfTI ``(x, y, z)`` array transposed to ``(Z, Y, X)``.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from action_ray.errors import CaseError

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


def read_nifti(fs, path: str) -> tuple[nib.spatialimages.SpatialImage, int]:
    """Read a whole NIfTI-1/2 file (gzip or not) into memory from any fsspec filesystem.

    One ``cat_file`` per file keeps S3 traffic to one GET and avoids nibabel seeking inside a
    remote gzip stream. Returns the image and the number of bytes fetched.
    """
    try:
        raw = fs.cat_file(path)
    except FileNotFoundError:
        raise CaseError(f"{path}: file not found") from None
    except Exception as exc:  # network or permission problems: name the file, keep the reason
        raise CaseError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None
    fetched = len(raw)
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise CaseError(f"{path}: truncated or corrupt gzip ({exc}); re-download the file") from None
    if len(raw) < 348:
        raise CaseError(f"{path}: only {len(raw)} bytes, too short for a NIfTI header (truncated?)")
    sizeof_hdr = {int.from_bytes(raw[:4], order) for order in ("little", "big")}
    klass = nib.Nifti2Image if 540 in sizeof_hdr else nib.Nifti1Image
    try:
        return klass.from_bytes(raw), fetched
    except Exception as exc:
        raise CaseError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from None


def _voxels(img, path: str) -> np.ndarray:
    """The scaled voxel array as a 3-D (x, y, z) array; trailing singleton axes are dropped."""
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise CaseError(f"{path}: voxel data unreadable, file truncated? ({type(exc).__name__}: {exc})") from None
    if data.size == 0:
        raise CaseError(f"{path}: empty volume (shape {tuple(img.shape)})")
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise CaseError(f"{path}: {data.ndim}-D array of shape {data.shape}; action-ray stores single-channel "
                        "3-D volumes (split multi-channel or 4-D files first)")
    return data


def check_image(data: np.ndarray, path: str) -> np.ndarray:
    """Finite, non-constant intensities; returns float32 (x, y, z)."""
    image = data.astype(np.float32, copy=False)
    finite = np.isfinite(image)
    if not finite.all():
        n_nan = int(np.isnan(image).sum())
        n_inf = int(image.size - finite.sum() - n_nan)
        raise CaseError(f"{path}: image has {n_nan} NaN and {n_inf} Inf voxels; fix or mask them before ingest")
    if image.min() == image.max():
        raise CaseError(f"{path}: image is constant ({float(image.min())}) — an empty or blank volume")
    return image


def check_label(data: np.ndarray, path: str, classes: dict[int, str]) -> np.ndarray:
    """Integer values that are all declared classes; returns uint8 (x, y, z)."""
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
    label = data.astype(np.uint8)
    present = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
    unknown = [int(v) for v in present if int(v) not in classes]
    if unknown:
        raise CaseError(f"{path}: label values {unknown} are not declared classes {declared}; "
                        "fix the label or the recipe's classes")
    return label


def grid_displacement_mm(a: np.ndarray, b: np.ndarray, shape: tuple[int, ...]) -> float:
    """Largest distance (mm) between where two affines put the corners of a ``shape`` grid."""
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    return float(np.abs(corners @ (np.asarray(a) - np.asarray(b)).T)[:, :3].max())


def to_store_orientation(array: np.ndarray) -> np.ndarray:
    """NIfTI (x, y, z) -> store (Z, Y, X), contiguous so chunks are written without copies."""
    return np.ascontiguousarray(array.transpose(2, 1, 0))


def load_case(fs, image_path: str, label_path: str | None, classes: dict[int, str],
              affine_tolerance_mm: float = AFFINE_TOLERANCE_MM) -> LoadedCase:
    """Read, validate and reorient one (image, label) pair; raise CaseError on any problem."""
    img, n_image = read_nifti(fs, image_path)
    image = check_image(_voxels(img, image_path), image_path)
    affine = np.asarray(img.affine, dtype=np.float64)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    if len(zooms) < 3 or min(zooms) <= 0:
        raise CaseError(f"{image_path}: voxel spacing {zooms} is not positive; the header is broken")
    label = None
    n_label = 0
    if label_path is not None:
        lbl, n_label = read_nifti(fs, label_path)
        label_data = _voxels(lbl, label_path)
        if label_data.shape != image.shape:
            raise CaseError(f"{label_path}: label shape {label_data.shape} differs from image shape "
                            f"{image.shape} ({image_path})")
        shift = grid_displacement_mm(affine, lbl.affine, image.shape)
        if shift > affine_tolerance_mm:
            raise CaseError(f"{label_path}: label affine differs from the image's ({image_path}): grids "
                            f"disagree by up to {shift:.3g} mm (tolerance {affine_tolerance_mm} mm)")
        label = to_store_orientation(check_label(label_data, label_path, classes))
    return LoadedCase(
        image=to_store_orientation(image),
        label=label,
        spacing=(zooms[2], zooms[1], zooms[0]),
        affine=affine.tolist(),
        bytes_read=n_image + n_label,
    )
