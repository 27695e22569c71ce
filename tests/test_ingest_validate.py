"""Each kind of bad case is caught by load_case with the file name and the reason (unreadable files:
tests/test_io_nifti.py)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import fsspec
import pytest

from action_ray.errors import CaseError
from action_ray.ingest.validate import load_case
from niftis import expected_arrays, make_affine, make_volume, save

FS = fsspec.filesystem("file")
CLASSES = {0: "background", 1: "a", 2: "b", 3: "c"}


def pair(tmp_path, image=None, label=None, label_affine=None, suffix=".nii.gz"):
    good_image, good_label = make_volume(seed=7)
    img = save(tmp_path / f"img{suffix}", good_image if image is None else image)
    lbl = save(tmp_path / f"lbl{suffix}", good_label if label is None else label, label_affine)
    return str(img), str(lbl)


def test_good_pair_is_reoriented_to_zyx_with_spacing_in_axis_order(tmp_path):
    img, lbl = pair(tmp_path)
    case = load_case(FS, img, lbl, CLASSES)
    assert case.image.dtype == np.float32 and case.label.dtype == np.uint8
    assert case.image.shape == (5, 16, 20)
    np.testing.assert_array_equal(case.image, expected_arrays(img))
    np.testing.assert_array_equal(case.image[2], nib.load(img).get_fdata()[:, :, 2].T.astype(np.float32))
    np.testing.assert_array_equal(case.label, expected_arrays(lbl))
    assert case.spacing == (6.0, 1.25, 1.5)
    assert np.allclose(case.affine, make_affine())


def test_shape_mismatch(tmp_path):
    _, label = make_volume(seed=1, shape=(20, 16, 4))
    img, lbl = pair(tmp_path, label=label)
    with pytest.raises(CaseError, match=r"lbl\.nii\.gz: label shape \(20, 16, 4\) differs from image shape \(20, 16, 5\)"):
        load_case(FS, img, lbl, CLASSES)


def test_affine_mismatch_beyond_tolerance_but_float_noise_accepted(tmp_path):
    shifted = make_affine()
    shifted[0, 3] += 0.75  # half a voxel
    img, lbl = pair(tmp_path, label_affine=shifted)
    with pytest.raises(CaseError, match=r"lbl\.nii\.gz: label affine differs .* 0\.75 mm"):
        load_case(FS, img, lbl, CLASSES)
    noisy = make_affine()
    noisy[:3, :3] *= 1 + 1e-7
    img, lbl = pair(tmp_path, label_affine=noisy)
    load_case(FS, img, lbl, CLASSES)


def test_label_value_outside_declared_classes(tmp_path):
    _, label = make_volume(seed=7)
    label[0, 0, 0] = 7
    img, lbl = pair(tmp_path, label=label)
    with pytest.raises(CaseError, match=r"lbl\.nii\.gz: label values \[7\] are not declared classes \[0, 1, 2, 3\]"):
        load_case(FS, img, lbl, CLASSES)


def test_non_integer_label_values(tmp_path):
    _, label = make_volume(seed=7)
    label = label.astype(np.float32)
    label[3, 3, 1] = 1.5
    img, lbl = pair(tmp_path, label=label)
    with pytest.raises(CaseError, match=r"lbl\.nii\.gz: label has 1 non-integer values \(e\.g\. 1\.5\)"):
        load_case(FS, img, lbl, CLASSES)


def test_integer_valued_float_labels_are_accepted(tmp_path):
    _, label = make_volume(seed=7)
    img, lbl = pair(tmp_path, label=label.astype(np.float64))
    np.testing.assert_array_equal(load_case(FS, img, lbl, CLASSES).label, label.transpose(2, 1, 0))


@pytest.mark.parametrize("bad, word", [(np.nan, "1 NaN"), (np.inf, "1 Inf")])
def test_nan_or_inf_in_image(tmp_path, bad, word):
    image, _ = make_volume(seed=7)
    image[1, 2, 3] = bad
    img, lbl = pair(tmp_path, image=image)
    with pytest.raises(CaseError, match=rf"img\.nii\.gz: image has .*{word}"):
        load_case(FS, img, lbl, CLASSES)


def test_constant_image_is_empty(tmp_path):
    img, lbl = pair(tmp_path, image=np.full((20, 16, 5), 3.0, np.float32))
    with pytest.raises(CaseError, match=r"img\.nii\.gz: image is constant"):
        load_case(FS, img, lbl, CLASSES)
