"""The fast tail percentiles must be np.percentile's floats exactly (stored stats feed training)."""

import numpy as np
import pytest

from action_ray.io import tail_percentiles as tp
from action_ray.io.tail_percentiles import tail_percentiles

STORED = (0.5, 99.5)


def volumes():
    rng = np.random.default_rng(3)
    yield rng.normal(400, 90, (12, 128, 128)).astype(np.float32)          # MR-like
    yield np.round(rng.normal(0, 300, (9, 97, 131))).astype(np.float32)    # CT-like: many ties
    yield rng.exponential(5, (4, 64, 70)).astype(np.float64)               # skewed, float64
    yield np.zeros((3, 60, 60), np.float32)                                # constant
    ramp = np.arange(20 * 50 * 50, dtype=np.float32).reshape(20, 50, 50)   # strided sample in step
    yield ramp
    yield ramp[::-1].copy()
    blocky = np.zeros((8, 64, 64), np.float32)                             # sample sees only zeros
    blocky[:, :3] = rng.normal(size=(8, 3, 64))
    yield blocky
    yield rng.normal(size=(5000,)).astype(np.float32)                      # below SMALL: numpy itself


@pytest.mark.parametrize("index", range(8))
def test_equals_numpy_bit_for_bit(index):
    volume = list(volumes())[index]
    ours = tail_percentiles(volume, STORED)
    theirs = tuple(float(v) for v in np.percentile(volume, list(STORED)))
    assert ours == theirs
    assert tail_percentiles(volume, (2.0, 98.0)) == tuple(float(v) for v in np.percentile(volume, [2.0, 98.0]))


def test_many_random_sizes_agree_with_numpy():
    rng = np.random.default_rng(0)
    for _ in range(60):
        n = int(rng.integers(tp.SMALL, 200_000))
        volume = (rng.standard_t(3, n) * rng.uniform(1, 500)).astype(np.float32)
        if rng.random() < 0.3:
            volume = np.round(volume)
        assert tail_percentiles(volume, STORED) == tuple(float(v) for v in np.percentile(volume, list(STORED)))


def test_nan_and_a_missed_sample_fall_back_to_numpy(monkeypatch):
    volume = np.random.default_rng(1).normal(size=(4, 64, 64)).astype(np.float32)
    volume[2, 3, 4] = np.nan
    assert all(np.isnan(v) for v in tail_percentiles(volume, STORED))
    # force the sampled cut to miss: the full partition must still give numpy's numbers
    monkeypatch.setattr(tp, "_sample_index", lambda count, n, m: 0)
    clean = np.random.default_rng(2).normal(size=(4, 64, 64)).astype(np.float32)
    assert tail_percentiles(clean, STORED) == tuple(float(v) for v in np.percentile(clean, list(STORED)))
