"""Phantom generators: determinism, label sets, geometry ranges and class fractions (docs/phantoms.md)."""

from __future__ import annotations

import numpy as np
import pytest

from action_ray.synth.cardiac import GROUPS, cardiac_case
from action_ray.synth.fields import AngularModes, smooth_field, smooth_min
from action_ray.synth.liver import N_SLICES, liver_case

SIZE = 64  # small in-plane matrix: same anatomy and fractions, a quarter of the cost


@pytest.fixture(scope="module")
def cardiac_cases():
    return [cardiac_case(seed, SIZE) for seed in range(6)]


@pytest.fixture(scope="module")
def liver_cases():
    return [liver_case(seed, SIZE) for seed in range(6)]


def test_smooth_field_is_unit_std_deterministic_and_smooth():
    axes = (np.arange(10.0), np.arange(0.0, 100.0, 2.0), np.arange(0.0, 80.0, 2.0))
    a = smooth_field(np.random.default_rng(3), axes, 10.0)
    b = smooth_field(np.random.default_rng(3), axes, 10.0)
    assert a.shape == (10, 50, 40) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert abs(float(a.mean())) < 1e-4 and abs(float(a.std()) - 1) < 1e-3
    # Neighbours 2 mm apart on a 10 mm correlation length are strongly correlated.
    assert np.corrcoef(a[:, :-1].ravel(), a[:, 1:].ravel())[0, 1] > 0.9


def test_angular_modes_are_periodic_and_smooth_min_is_below_both():
    modes = AngularModes.draw(np.random.default_rng(0), (2, 3), 0.1)
    theta = np.array([0.3, 0.3 + 2 * np.pi], dtype=np.float32)
    values = modes(theta)
    assert values[0] == pytest.approx(values[1], abs=1e-5)
    a, b = np.array([1.0, -5.0], np.float32), np.array([1.5, 30.0], np.float32)
    blended = smooth_min(a, b, 20.0)
    assert np.all(blended <= np.minimum(a, b) + 1e-6)
    assert blended[1] == pytest.approx(-5.0)  # further apart than k: the plain minimum


def test_cardiac_same_seed_same_volumes_and_different_seed_differs(cardiac_cases):
    again = cardiac_case(0, SIZE)
    first = cardiac_cases[0]
    for name in ("ed_image", "ed_label", "es_image", "es_label"):
        np.testing.assert_array_equal(getattr(again, name), getattr(first, name))
    assert (again.spacing, again.group, again.es_frame) == (first.spacing, first.group, first.es_frame)
    other = cardiac_cases[1]
    assert other.ed_image.shape != first.ed_image.shape or not np.array_equal(other.ed_image, first.ed_image)


def test_cardiac_types_labels_and_acquisition_ranges(cardiac_cases):
    for case in cardiac_cases:
        for image, label in ((case.ed_image, case.ed_label), (case.es_image, case.es_label)):
            assert image.dtype == np.float32 and label.dtype == np.uint8
            assert image.shape == label.shape == (image.shape[0], SIZE, SIZE)
            assert 6 <= image.shape[0] <= 18
            assert set(np.unique(label).tolist()) <= {0, 1, 2, 3}
            assert np.isfinite(image).all() and image.min() >= 0  # magnitude image
        dz, dy, dx = case.spacing
        assert 5.0 <= dz <= 10.0 and dy == dx and 270 / SIZE <= dx <= 360 / SIZE
        assert case.group in GROUPS and case.ed_frame != case.es_frame <= case.nb_frames
        assert {1, 2, 3} <= set(np.unique(case.ed_label).tolist())


def test_cardiac_class_fractions_physiology_and_contrast(cardiac_cases):
    fractions = np.array([np.bincount(lab.ravel(), minlength=4) / lab.size
                          for c in cardiac_cases for lab in (c.ed_label, c.es_label)])
    mean = fractions.mean(axis=0)
    assert np.all((mean[1:] > 0.003) & (mean[1:] < 0.03)), mean  # each class ~1 % of voxels
    for case in cardiac_cases:
        # Systole: the LV cavity shrinks; blood is bright and myocardium dark (bSSFP).
        assert (case.es_label == 3).sum() < (case.ed_label == 3).sum()
        assert case.ed_image[case.ed_label == 3].mean() > 1.5 * case.ed_image[case.ed_label == 2].mean()
    # Random global gain: intensities are not comparable between subjects without normalising.
    blood = [float(np.median(c.ed_image[c.ed_label == 3])) for c in cardiac_cases]
    assert max(blood) / min(blood) > 2


def test_liver_same_seed_same_volume_and_different_seed_differs(liver_cases):
    again = liver_case(0, SIZE)
    np.testing.assert_array_equal(again.image, liver_cases[0].image)
    np.testing.assert_array_equal(again.label, liver_cases[0].label)
    assert not np.array_equal(liver_cases[1].label, liver_cases[0].label)


def test_liver_types_labels_fractions_and_hu(liver_cases):
    fractions = []
    for case in liver_cases:
        assert case.image.dtype == np.float32 and case.label.dtype == np.uint8
        assert case.image.shape == case.label.shape == (N_SLICES, SIZE, SIZE)
        assert set(np.unique(case.label).tolist()) <= {0, 1, 2}
        assert case.spacing[0] in (2.5, 3.0, 4.0, 5.0) and 320 / SIZE <= case.spacing[1] <= 420 / SIZE
        liver_hu = float(np.median(case.image[case.label == 1]))
        assert 60 < liver_hu < 160  # portal-venous liver
        assert case.image.min() < -700  # air outside the body
        fractions.append(np.bincount(case.label.ravel(), minlength=3) / case.label.size)
        if (case.label == 2).sum() > 200:
            # Lesions differ from the parenchyma (mostly hypodense).
            assert abs(float(np.median(case.image[case.label == 2])) - liver_hu) > 10
    mean = np.mean(fractions, axis=0)
    assert 0.03 < mean[1] < 0.12, mean
    assert 0.0005 < mean[2] < 0.02, mean


def test_generators_reject_bad_size():
    with pytest.raises(ValueError, match="size"):
        cardiac_case(0, size=15)
    with pytest.raises(ValueError, match="size"):
        liver_case(0, size=8)


def test_cardiac_heart_crop_loses_nothing(monkeypatch):
    """The heart is rendered in a crop for speed; an unbounded crop must give the same volumes."""
    import action_ray.synth.cardiac as cardiac

    for seed in (0, 2, 9):
        cropped = cardiac_case(seed, 48)
        monkeypatch.setattr(cardiac, "_heart_reach", lambda subject: 1e4)
        full = cardiac_case(seed, 48)
        monkeypatch.undo()
        np.testing.assert_array_equal(cropped.ed_label, full.ed_label)
        np.testing.assert_array_equal(cropped.es_label, full.es_label)
        np.testing.assert_allclose(cropped.ed_image, full.ed_image, rtol=1e-4, atol=1e-3 * float(full.ed_image.max()))
