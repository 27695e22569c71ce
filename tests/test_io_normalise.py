"""Intensity normalisation: the map from stored case statistics, its one vocabulary, and the
older spellings that stores and user recipes may still carry."""

from __future__ import annotations

import numpy as np
import pytest

from action_ray.errors import ConfigError
from action_ray.io.normalise import (
    NormalisationSpec, current_spelling, intensity_stats, normalise_array, resolve_spec,
)


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
    spec = NormalisationSpec("percentile")
    whole = normalise_array(mr_volume, spec, stats)
    assert whole.dtype == np.float32 and whole.min() == 0.0 and whole.max() == 1.0
    expected = (np.clip(mr_volume, stats["p0_5"], stats["p99_5"]) - stats["p0_5"]) / (stats["p99_5"] - stats["p0_5"])
    np.testing.assert_allclose(whole, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(normalise_array(mr_volume[2:4], spec, stats), whole[2:4])


def test_window_zscore_minmax(mr_volume):
    ct = np.array([-1000.0, -125.0, 75.0, 275.0, 2000.0], dtype=np.float32)
    np.testing.assert_allclose(normalise_array(ct, NormalisationSpec("window"), {}), [0, 0, 0.5, 1, 1])
    stats = stats_of(mr_volume)
    z = normalise_array(mr_volume, NormalisationSpec("zscore"), stats)
    assert abs(z.mean()) < 1e-4 and abs(z.std() - 1) < 1e-4
    mm = normalise_array(mr_volume, NormalisationSpec("minmax"), stats)
    assert mm.min() == 0.0 and abs(mm.max() - 1.0) < 1e-6
    constant = np.full((2, 3), 7.0, dtype=np.float32)
    assert np.all(normalise_array(constant, NormalisationSpec("minmax"), stats_of(constant)) == 0)


def test_spec_resolution_order():
    assert resolve_spec({"modality": "CT"}).method == "window"
    assert resolve_spec({"modality": "MR"}).method == "percentile"
    recipe_block = {"method": "window", "window": [-100, 200]}
    spec = resolve_spec({"modality": "MR", "recipe": {"normalisation": recipe_block}})
    assert spec.method == "window" and spec.window == (-100.0, 200.0)
    assert resolve_spec({"modality": "CT", "normalisation": {"method": "percentile"}}).method == "percentile"
    assert resolve_spec({"modality": "CT", "normalisation": {"method": "percentile"}}, "zscore").method == "zscore"


def test_bad_specs_name_the_problem():
    with pytest.raises(ConfigError, match="unknown key"):
        NormalisationSpec.from_dict({"method": "window", "centre": 3})
    with pytest.raises(ConfigError, match="percentiles"):
        NormalisationSpec.from_dict({"method": "percentile_minmax", "lower": 1, "upper": 99})
    with pytest.raises(ConfigError, match="not one of"):
        NormalisationSpec("histogram")
    with pytest.raises(ConfigError, match="'p99_5'"):
        normalise_array(np.zeros(3, np.float32), NormalisationSpec("percentile"), {"p0_5": 0.0}, "case7")


def test_intensity_stats_are_what_the_methods_read(mr_volume):
    stats = intensity_stats(mr_volume)
    assert stats.keys() == stats_of(mr_volume).keys()
    np.testing.assert_allclose(list(stats.values()), list(stats_of(mr_volume).values()), rtol=1e-6)
    for method in ("percentile", "minmax", "zscore"):
        normalise_array(mr_volume, NormalisationSpec(method), stats)  # nothing missing


# ----------------------------------------------------------------- one vocabulary, old spellings read
OLD_STORE_BLOCKS = [  # what ingest wrote into store metadata before the vocabulary was unified
    ({"method": "percentile_minmax", "lower": 0.5, "upper": 99.5}, NormalisationSpec("percentile")),
    ({"method": "window", "low": -125, "high": 275}, NormalisationSpec("window", window=(-125.0, 275.0))),
    ({"method": "zscore"}, NormalisationSpec("zscore")),
]


@pytest.mark.parametrize("block, spec", OLD_STORE_BLOCKS)
def test_old_store_metadata_still_reads_to_the_same_spec(block, spec):
    assert resolve_spec({"modality": "MR", "normalisation": block}) == spec
    assert resolve_spec({"modality": "MR", "normalization": block}) == spec  # the American key
    assert resolve_spec({"modality": "MR", "recipe": {"normalisation": block}}) == spec


@pytest.mark.parametrize("old, new", [("percentile_minmax", "percentile"), ("hu_window", "window"),
                                      ("z-score", "zscore")])
def test_old_method_names_map_to_todays(old, new):
    assert current_spelling(old) == {"method": new}
    assert NormalisationSpec.from_dict(old).method == new
    assert resolve_spec(None, old).method == new


def test_current_spelling_is_left_as_is_and_none_values_are_absent():
    block = {"method": "window", "window": [-100, 200], "epsilon": 1e-3}
    assert current_spelling(block) == block
    assert current_spelling({"method": "percentile", "lower": None, "upper": None}) == {"method": "percentile"}
    with pytest.raises(ConfigError, match="window once"):
        current_spelling({"method": "window", "window": [0, 1], "low": 0})


@pytest.mark.parametrize("spec", [NormalisationSpec("percentile"), NormalisationSpec("window", window=(-100.0, 200.0)),
                                  NormalisationSpec("minmax"), NormalisationSpec("zscore", epsilon=1e-3),
                                  NormalisationSpec("none")])
def test_blocks_are_written_in_todays_vocabulary_and_read_back_equal(spec):
    block = spec.to_dict()
    assert set(block) <= {"method", "window", "epsilon"} and block["method"] == spec.method
    assert ("window" in block) == (spec.method == "window")
    assert NormalisationSpec.from_dict(block) == spec
    assert resolve_spec({"normalisation": block}) == spec
