"""Intensity normalisation from stored case statistics, and the vectorised slice resize."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from action_ray.data.normalize import NormalizationSpec, normalize_array, resolve_spec
from action_ray.data.resize import resize_slices
from action_ray.errors import ConfigError


def stats_of(volume: np.ndarray) -> dict:
    return {"min": float(volume.min()), "max": float(volume.max()), "mean": float(volume.mean()),
            "std": float(volume.std()), "p0_5": float(np.percentile(volume, 0.5)),
            "p99_5": float(np.percentile(volume, 99.5))}


@pytest.fixture
def mr_volume():
    rng = np.random.default_rng(0)
    return (rng.gamma(2.0, 300.0, size=(6, 16, 20)) + 40).astype(np.float32)


def test_percentile_slab_equals_whole_volume_normalisation(mr_volume):
    stats = stats_of(mr_volume)
    spec = NormalizationSpec("percentile")
    whole = normalize_array(mr_volume, spec, stats)
    assert whole.dtype == np.float32 and whole.min() == 0.0 and whole.max() == 1.0
    expected = (np.clip(mr_volume, stats["p0_5"], stats["p99_5"]) - stats["p0_5"]) / (stats["p99_5"] - stats["p0_5"])
    np.testing.assert_allclose(whole, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(normalize_array(mr_volume[2:4], spec, stats), whole[2:4])


def test_window_zscore_minmax(mr_volume):
    ct = np.array([-1000.0, -125.0, 75.0, 275.0, 2000.0], dtype=np.float32)
    np.testing.assert_allclose(normalize_array(ct, NormalizationSpec("window"), {}), [0, 0, 0.5, 1, 1])
    stats = stats_of(mr_volume)
    z = normalize_array(mr_volume, NormalizationSpec("zscore"), stats)
    assert abs(z.mean()) < 1e-4 and abs(z.std() - 1) < 1e-4
    mm = normalize_array(mr_volume, NormalizationSpec("minmax"), stats)
    assert mm.min() == 0.0 and abs(mm.max() - 1.0) < 1e-6
    constant = np.full((2, 3), 7.0, dtype=np.float32)
    assert np.all(normalize_array(constant, NormalizationSpec("minmax"), stats_of(constant)) == 0)


def test_spec_resolution_order_and_recipe_vocabulary():
    assert resolve_spec({"modality": "CT"}).method == "window"
    assert resolve_spec({"modality": "MR"}).method == "percentile"
    recipe_block = {"method": "window", "low": -100, "high": 200}
    spec = resolve_spec({"modality": "MR", "recipe": {"normalisation": recipe_block}})
    assert spec.method == "window" and spec.window == (-100.0, 200.0)
    spec = resolve_spec({"normalisation": {"method": "percentile_minmax", "lower": 0.5, "upper": 99.5}})
    assert spec.method == "percentile"
    assert resolve_spec({"modality": "CT"}, "zscore").method == "zscore"


def test_bad_specs_name_the_problem():
    with pytest.raises(ConfigError, match="unknown key"):
        NormalizationSpec.from_dict({"method": "window", "centre": 3})
    with pytest.raises(ConfigError, match="percentiles"):
        NormalizationSpec.from_dict({"method": "percentile_minmax", "lower": 1, "upper": 99})
    with pytest.raises(ConfigError, match="not one of"):
        NormalizationSpec("histogram")
    with pytest.raises(ConfigError, match="'p99_5'"):
        normalize_array(np.zeros(3, np.float32), NormalizationSpec("percentile"), {"p0_5": 0.0}, "case7")


def test_resize_matches_scipy_for_labels_and_is_smooth_for_images():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=(3, 8, 10)).astype(np.uint8)
    images = rng.random((3, 8, 10)).astype(np.float32)
    out_images, out_labels = resize_slices(images, labels, (16, 30))
    assert out_images.shape == (3, 16, 30) and out_labels.shape == (3, 16, 30)
    assert out_labels.dtype == np.uint8
    expected = np.stack([ndimage.zoom(l, (2, 3), order=0, grid_mode=True, mode="grid-constant") for l in labels])
    np.testing.assert_array_equal(out_labels, expected)
    # integer-factor nearest resize repeats each label exactly
    np.testing.assert_array_equal(out_labels[:, ::2, ::3], labels)
    assert abs(out_images.mean() - images.mean()) < 0.02
    same_images, same_labels = resize_slices(images, labels, (8, 10))
    assert same_images is images and same_labels is labels
