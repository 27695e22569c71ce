"""NIfTI in and out: the (x, y, z) <-> (Z, Y, X) conversion both ways, and a clear error naming
the file for every kind of unreadable scan."""

from __future__ import annotations

import gzip

import fsspec
import nibabel as nib
import numpy as np
import pytest

from action_ray.errors import CaseError
from action_ray.io.nifti import (
    NiftiScan, affine_from_spacing, from_nifti_axes, nifti_bytes, nifti_image, read_scan, to_nifti_axes,
)
from niftis import make_affine, make_volume, save, truncate_gzip

FS = fsspec.filesystem("file")


def distinct_volume(shape=(5, 16, 20)) -> np.ndarray:
    """(Z, Y, X) float32 whose every voxel differs, so any axis mix-up changes the values."""
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


@pytest.mark.parametrize("compresslevel, suffix", [(6, ".nii.gz"), (None, ".nii")])
def test_written_volume_reads_back_identical_with_axial_slices_where_nifti_has_them(tmp_path, compresslevel, suffix):
    volume, spacing = distinct_volume(), (6.0, 1.25, 1.5)
    path = tmp_path / f"scan{suffix}"
    path.write_bytes(nifti_bytes(nifti_image(volume, affine_from_spacing(spacing)), compresslevel))
    on_disk = nib.load(str(path))
    assert on_disk.shape == (20, 16, 5)                                   # NIfTI (x, y, z)
    np.testing.assert_array_equal(np.asanyarray(on_disk.dataobj)[:, :, 2].T, volume[2])
    np.testing.assert_allclose(on_disk.header.get_zooms()[:3], (1.5, 1.25, 6.0))
    scan = read_scan(FS, str(path))
    np.testing.assert_array_equal(scan.voxels, volume)
    assert scan.voxels.flags.c_contiguous and scan.file_shape == (20, 16, 5)
    assert scan.spacing() == spacing
    np.testing.assert_array_equal(scan.affine, np.diag([1.5, 1.25, 6.0, 1.0]))
    assert scan.bytes_read == path.stat().st_size


def test_a_file_written_elsewhere_reads_in_zyx_with_its_own_affine(tmp_path):
    image, _ = make_volume(seed=3)                                        # (x, y, z) as a NIfTI tool writes it
    path = save(tmp_path / "img.nii.gz", image)
    scan = read_scan(FS, str(path), dtype=np.float32)
    assert scan.voxels.shape == (5, 16, 20) and scan.voxels.dtype == np.float32
    for z in range(5):
        np.testing.assert_array_equal(scan.voxels[z], image[:, :, z].T)
    np.testing.assert_allclose(scan.affine, make_affine())
    assert scan.spacing() == (6.0, 1.25, 1.5)


def test_probabilities_go_out_classes_last_and_axes_invert_exactly():
    probs = np.random.default_rng(0).random((3, 4, 5, 6)).astype(np.float32)  # (C, Z, Y, X)
    out = to_nifti_axes(probs)
    assert out.shape == (6, 5, 4, 3)
    np.testing.assert_array_equal(out[:, :, 1, 2].T, probs[2, 1])
    volume = distinct_volume()
    np.testing.assert_array_equal(from_nifti_axes(to_nifti_axes(volume)), volume)
    with pytest.raises(ValueError, match="shape"):
        to_nifti_axes(np.zeros((4, 4)))


def test_source_header_codes_and_units_are_kept_and_gzip_is_deterministic():
    source = nib.Nifti1Image(np.zeros((2, 3, 4), np.float32), make_affine())
    source.set_qform(make_affine(), code=2)
    source.set_sform(make_affine(), code=4)
    source.header.set_xyzt_units(xyz="micron")
    image = nifti_image(np.zeros((4, 3, 2), np.uint8), make_affine(), source.header)
    assert (int(image.header["qform_code"]), int(image.header["sform_code"])) == (2, 4)
    assert image.header.get_xyzt_units()[0] == "micron" and image.get_data_dtype() == np.uint8
    plain = nifti_image(np.zeros((4, 3, 2), np.uint8), make_affine())
    assert (int(plain.header["qform_code"]), int(plain.header["sform_code"])) == (1, 1)
    assert plain.header.get_xyzt_units()[0] == "mm"
    first, second = nifti_bytes(plain, 4), nifti_bytes(plain, 4)
    assert first == second and first[4:8] == b"\x00\x00\x00\x00"        # no time stamp in the gzip header
    assert gzip.decompress(first) == nifti_bytes(plain, None)


# ------------------------------------------------------------------ unreadable scans name the file
def test_missing_file(tmp_path):
    with pytest.raises(CaseError, match=r"nope\.nii\.gz: file not found"):
        read_scan(FS, str(tmp_path / "nope.nii.gz"))


def test_truncated_gzip(tmp_path):
    path = save(tmp_path / "img.nii.gz", make_volume(seed=7)[0])
    truncate_gzip(path)
    with pytest.raises(CaseError, match=r"img\.nii\.gz: truncated or corrupt gzip"):
        read_scan(FS, str(path))


def test_truncated_uncompressed_nifti(tmp_path):
    path = save(tmp_path / "lbl.nii", make_volume(seed=7)[1])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 200])
    with pytest.raises(CaseError, match=r"lbl\.nii: .*truncated"):
        read_scan(FS, str(path))
    path.write_bytes(data[:100])
    with pytest.raises(CaseError, match=r"lbl\.nii: only 100 bytes, too short for a NIfTI header"):
        read_scan(FS, str(path))


def test_not_a_nifti(tmp_path):
    path = tmp_path / "img.nii.gz"
    path.write_bytes(b"<html>403 Forbidden</html>")
    with pytest.raises(CaseError, match=r"img\.nii\.gz"):
        read_scan(FS, str(path))


def test_zero_size_image_is_empty(tmp_path):
    path = save(tmp_path / "img.nii.gz", np.zeros((20, 16, 0), np.float32))
    with pytest.raises(CaseError, match=r"img\.nii\.gz: empty volume"):
        read_scan(FS, str(path))


def test_four_d_image_is_refused_but_trailing_singleton_is_fine(tmp_path):
    image, _ = make_volume(seed=7)
    assert read_scan(FS, str(save(tmp_path / "one.nii.gz", image[..., None]))).voxels.shape == (5, 16, 20)
    path = save(tmp_path / "two.nii.gz", np.stack([image, image], axis=-1))
    with pytest.raises(CaseError, match=r"two\.nii\.gz: 4-D array"):
        read_scan(FS, str(path))


def test_non_positive_spacing_is_reported_only_when_a_spacing_is_needed():
    # nibabel repairs a zero pixdim while loading, so the broken header is built directly
    scan = NiftiScan(path="img.nii.gz", voxels=np.zeros((2, 3, 4), np.float32), affine=np.eye(4),
                     zooms=(1.5, 1.25, 0.0), header=None, bytes_read=0)
    assert scan.file_shape == (4, 3, 2)                                   # a label's pixdim does not matter
    with pytest.raises(CaseError, match=r"img\.nii\.gz: voxel spacing .* is not positive"):
        scan.spacing()
