"""NIfTI files in and out, and the one place where their axis order is converted.

Arrays inside action-ray are ``(Z, Y, X)``: slice first, so ``volume[z]`` is an axial slice and
a store chunk of one slice is contiguous. NIfTI voxel indices are ``(i, j, k) = (x, y, z)``, and
the file's affine maps that index to scanner millimetres. Reversing the axes is therefore the
whole conversion, in both directions: ``volume[z] == nifti_data[:, :, z].T``. Ingest, synth and
predict all read and write through this module, so the three can never disagree about it; the
affine is kept exactly as the file has it (for voxel index (x, y, z)), which is what lets a
prediction go back onto its input's grid unchanged.

Every reading failure raises :class:`~action_ray.errors.CaseError` naming the file and the
reason, so ingest can skip the case and predict can say which input is broken.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt

from action_ray.errors import CaseError

#: The shortest possible NIfTI-1 header; anything shorter was cut off.
NIFTI1_HEADER_BYTES = 348
#: ``sizeof_hdr`` of a NIfTI-2 header (348 for NIfTI-1), read in either byte order.
NIFTI2_HEADER_BYTES = 540


def from_nifti_axes(data_xyz: np.ndarray) -> np.ndarray:
    """NIfTI ``(x, y, z)`` -> action-ray ``(Z, Y, X)``, contiguous so chunks are written without copies."""
    return np.ascontiguousarray(data_xyz.transpose())


def to_nifti_axes(volume_zyx: np.ndarray) -> np.ndarray:
    """Action-ray ``(Z, Y, X)`` -> NIfTI ``(x, y, z)``; ``(C, Z, Y, X)`` -> ``(x, y, z, C)``, classes last.

    A 4-D channel-first array (class probabilities) reverses to NIfTI's convention of the
    fourth axis holding the components, so one transpose serves labels and probabilities.
    """
    if volume_zyx.ndim not in (3, 4):
        raise ValueError(f"expected a (Z, Y, X) or (C, Z, Y, X) array, got shape {volume_zyx.shape}")
    return np.ascontiguousarray(volume_zyx.transpose())


def affine_from_spacing(spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """The voxel -> mm affine of an axis-aligned grid: ``diag(dx, dy, dz, 1)``, origin at 0."""
    dz, dy, dx = (float(v) for v in spacing_zyx)
    return np.diag([dx, dy, dz, 1.0])


@dataclass(frozen=True)
class NiftiScan:
    """One NIfTI file read into action-ray's axis order.

    ``affine`` and ``zooms`` stay in the file's own (x, y, z) terms: the affine is what a
    prediction is written back with, and the zooms become ``spacing()`` only where the caller
    needs a spacing (a broken pixdim in a label file does not matter, in an image it does).
    """

    path: str
    voxels: np.ndarray                   # (Z, Y, X), the file's scaled values
    affine: np.ndarray                   # 4x4 float64, for voxel index (x, y, z)
    zooms: tuple[float, ...]             # pixdim of (x, y, z)
    header: Any                          # the nibabel header (qform/sform codes, units)
    bytes_read: int                      # size of the file as stored (compressed if .gz)

    @property
    def file_shape(self) -> tuple[int, ...]:
        """The shape as the file (and every NIfTI viewer) shows it, ``(x, y, z)``: for messages."""
        return tuple(self.voxels.shape[::-1])

    def spacing(self) -> tuple[float, float, float]:
        """Voxel spacing ``(sz, sy, sx)`` in mm, in the order of the array axes."""
        if len(self.zooms) < 3 or min(self.zooms) <= 0:
            raise CaseError(f"{self.path}: voxel spacing {self.zooms} is not positive; the header is broken")
        return self.zooms[2], self.zooms[1], self.zooms[0]


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
    if len(raw) < NIFTI1_HEADER_BYTES:
        raise CaseError(f"{path}: only {len(raw)} bytes, too short for a NIfTI header (truncated?)")
    sizeof_hdr = {int.from_bytes(raw[:4], order) for order in ("little", "big")}
    klass = nib.Nifti2Image if NIFTI2_HEADER_BYTES in sizeof_hdr else nib.Nifti1Image
    try:
        return klass.from_bytes(raw), fetched
    except Exception as exc:
        raise CaseError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from None


def _volume_xyz(image, path: str) -> np.ndarray:
    """The scaled voxel array as a 3-D (x, y, z) array; trailing singleton axes are dropped."""
    try:
        data = np.asanyarray(image.dataobj)
    except Exception as exc:
        raise CaseError(f"{path}: voxel data unreadable, file truncated? ({type(exc).__name__}: {exc})") from None
    if data.size == 0:
        raise CaseError(f"{path}: empty volume (shape {tuple(image.shape)})")
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise CaseError(f"{path}: {data.ndim}-D array of shape {data.shape}; action-ray reads single-channel "
                        "3-D volumes (split multi-channel or 4-D files first)")
    return data


def read_scan(fs, path: str, dtype: npt.DTypeLike | None = None) -> NiftiScan:
    """Read one single-channel 3-D NIfTI file into (Z, Y, X), converted to ``dtype`` if given.

    The conversion happens before the transpose so a float64-scaled file is copied once at the
    target width, not twice at double width.
    """
    image, fetched = read_nifti(fs, path)
    data = _volume_xyz(image, path)
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    return NiftiScan(
        path=path,
        voxels=from_nifti_axes(data),
        affine=np.asarray(image.affine, dtype=np.float64),
        zooms=tuple(float(z) for z in image.header.get_zooms()[:3]),
        header=image.header,
        bytes_read=fetched,
    )


def nifti_image(volume_zyx: np.ndarray, affine: np.ndarray, source_header: Any = None) -> nib.Nifti1Image:
    """A NIfTI-1 image of a (Z, Y, X) or (C, Z, Y, X) array with ``affine`` as both qform and sform.

    With a source header, its qform/sform codes and spatial units are kept (a scanner-frame
    input stays scanner-frame); otherwise, and for codes/units the source leaves unset,
    code 1 (scanner) and millimetres (what every NIfTI reader assumes anyway).
    """
    data = to_nifti_axes(volume_zyx)
    affine = np.asarray(affine, dtype=np.float64)
    image = nib.Nifti1Image(data, affine)
    image.set_data_dtype(data.dtype)
    qcode = scode = 1
    units = "mm"
    if source_header is not None:
        qcode = int(source_header["qform_code"]) or 1
        scode = int(source_header["sform_code"]) or 1
        source_units = source_header.get_xyzt_units()[0]
        units = source_units if source_units not in ("unknown", None, "") else "mm"
    image.set_qform(affine, code=qcode)
    image.set_sform(affine, code=scode)
    image.header.set_xyzt_units(xyz=units)
    return image


def nifti_bytes(image: nib.Nifti1Image, compresslevel: int | None) -> bytes:
    """The file's bytes: gzipped at ``compresslevel`` (a ``.nii.gz``), or raw for ``None`` (a ``.nii``).

    The gzip header's timestamp is 0, so the bytes depend only on the data: the same volume
    written twice (by any number of workers) gives identical files.
    """
    raw = image.to_bytes()
    return raw if compresslevel is None else gzip.compress(raw, compresslevel=compresslevel, mtime=0)
