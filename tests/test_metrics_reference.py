"""action_ray.metrics agrees with medpy 0.5 (the reference of ACTION / SSL4MIS papers) to 1e-6.

medpy computes surfaces on the whole array; action-ray crops to the masks' bounding box first,
so masks touching the array border and masks far apart are part of the cases below.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from action_ray import metrics

medpy_binary = pytest.importorskip("medpy.metric.binary")

TOL = dict(rel=1e-6, abs=1e-6)


def _ball(shape, centre, radius, scale=None) -> np.ndarray:
    """Ellipsoid mask: sum(((x - c) / (r * scale))^2) <= 1 over the array axes."""
    scale = scale or (1.0,) * len(shape)
    grids = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    return sum(((g - c) / (radius * s)) ** 2 for g, c, s in zip(grids, centre, scale)) <= 1.0


def _box(shape, lo, hi) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return mask


def _blobs(rng: np.random.Generator, shape, sigma: float, fraction: float) -> np.ndarray:
    """Random smooth blobs (several components, holes) covering about ``fraction`` of the array."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field > np.quantile(field, 1.0 - fraction)


def _pairs():
    """(name, pred, gt, spacing) cases: random and structured, 2-D and 3-D, iso- and anisotropic."""
    rng = np.random.default_rng(20230618)
    cases = []
    for i in range(3):
        cases.append((f"blobs3d-{i}", _blobs(rng, (12, 40, 36), 2.0, 0.2), _blobs(rng, (12, 40, 36), 2.0, 0.2),
                      (5.0, 0.78, 0.78)))
        cases.append((f"blobs2d-{i}", _blobs(rng, (64, 48), 3.0, 0.15), _blobs(rng, (64, 48), 3.0, 0.15),
                      (1.4, 0.6)))
    noise_a, noise_b = rng.random((10, 20, 20)) < 0.05, rng.random((10, 20, 20)) < 0.05
    cases.append(("salt-noise3d", noise_a, noise_b, (2.0, 1.0, 0.5)))
    shape3 = (24, 32, 32)
    cases.append(("spheres", _ball(shape3, (12, 16, 16), 8), _ball(shape3, (13, 17, 15), 7), (1.0, 1.0, 1.0)))
    cases.append(("ellipsoids-aniso", _ball(shape3, (12, 15, 16), 7, (0.5, 1.0, 1.2)),
                  _ball(shape3, (11, 16, 16), 8, (0.6, 1.0, 1.0)), (3.0, 0.9, 0.7)))
    cases.append(("cubes", _box(shape3, (4, 4, 4), (16, 20, 18)), _box(shape3, (6, 5, 3), (18, 22, 20)),
                  (2.5, 1.0, 1.0)))
    shell = _ball(shape3, (12, 16, 16), 9) & ~_ball(shape3, (12, 16, 16), 8)
    cases.append(("thin-shell-vs-sphere", shell, _ball(shape3, (12, 16, 16), 9), (1.5, 0.8, 0.8)))
    cases.append(("touching-border", _box(shape3, (0, 0, 20), (10, 12, 32)), _box(shape3, (0, 2, 18), (12, 10, 32)),
                  (4.0, 1.0, 1.0)))
    cases.append(("far-apart", _box(shape3, (0, 0, 0), (3, 3, 3)), _box(shape3, (20, 28, 29), (24, 32, 32)),
                  (2.0, 0.5, 0.5)))
    cases.append(("single-voxels", _box(shape3, (3, 4, 5), (4, 5, 6)), _box(shape3, (9, 1, 30), (10, 2, 31)),
                  (5.0, 0.7, 0.7)))
    cases.append(("nested", _ball(shape3, (12, 16, 16), 4), _ball(shape3, (12, 16, 16), 10), (1.0, 0.5, 0.5)))
    return cases


CASES = _pairs()


def _medpy(pred, gt, spacing):
    return {
        "dice": medpy_binary.dc(pred, gt),
        "jaccard": medpy_binary.jc(pred, gt),
        "hd95": medpy_binary.hd95(pred, gt, voxelspacing=spacing),
        "asd": medpy_binary.asd(pred, gt, voxelspacing=spacing),
        "assd": medpy_binary.assd(pred, gt, voxelspacing=spacing),
    }


@pytest.mark.parametrize("name,pred,gt,spacing", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("units", ["voxels", "spacing"])
def test_binary_metrics_match_medpy(name, pred, gt, spacing, units):
    spacing = None if units == "voxels" else spacing
    ours = metrics.binary_metrics(pred, gt, spacing=spacing)
    reference = _medpy(pred, gt, spacing)
    for key, value in reference.items():
        assert ours[key] == pytest.approx(value, **TOL), (name, key)


@pytest.mark.parametrize("name,pred,gt,spacing", CASES[:4], ids=[c[0] for c in CASES[:4]])
def test_directed_distances_and_functions_match_medpy(name, pred, gt, spacing):
    """The single-metric functions, both argument orders (ASD is directed)."""
    for a, b in ((pred, gt), (gt, pred)):
        assert metrics.asd(a, b, spacing) == pytest.approx(medpy_binary.asd(a, b, voxelspacing=spacing), **TOL)
        assert metrics.hd95(a, b, spacing) == pytest.approx(medpy_binary.hd95(a, b, voxelspacing=spacing), **TOL)
        assert metrics.assd(a, b, spacing) == pytest.approx(medpy_binary.assd(a, b, voxelspacing=spacing), **TOL)
        assert metrics.dice(a, b) == pytest.approx(medpy_binary.dc(a, b), **TOL)
        assert metrics.jaccard(a, b) == pytest.approx(medpy_binary.jc(a, b), **TOL)


def test_case_metrics_mm_and_voxels_match_medpy_per_class():
    rng = np.random.default_rng(7)
    shape, spacing = (10, 48, 40), (6.0, 0.9, 0.9)
    gt = np.zeros(shape, np.int16)
    gt[_blobs(rng, shape, 2.5, 0.3)] = 1
    gt[_ball(shape, (5, 24, 20), 8, (0.4, 1.0, 1.0))] = 2
    gt[_ball(shape, (5, 24, 20), 4, (0.4, 1.0, 1.0))] = 3
    pred = gt.copy()
    flip = rng.random(shape) < 0.03
    pred[flip] = rng.integers(0, 4, size=int(flip.sum()))
    rows = metrics.case_metrics(pred, gt, classes=[1, 2, 3], spacing=spacing)
    assert [r["class"] for r in rows] == [1, 2, 3]
    for row in rows:
        p, g = pred == row["class"], gt == row["class"]
        mm, vox = _medpy(p, g, spacing), _medpy(p, g, None)
        assert row["dice"] == pytest.approx(mm["dice"], **TOL)
        assert row["jaccard"] == pytest.approx(mm["jaccard"], **TOL)
        for key in ("hd95", "asd", "assd"):
            assert row[f"{key}_mm"] == pytest.approx(mm[key], **TOL), (row["class"], key)
            assert row[f"{key}_vox"] == pytest.approx(vox[key], **TOL), (row["class"], key)


def _ssl4mis_protocol(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float, float, float]:
    """The published per-case rule (method.md §6) on top of medpy, in voxel units."""
    if pred.sum() > 0 and gt.sum() > 0:
        return (medpy_binary.dc(pred, gt), medpy_binary.jc(pred, gt),
                medpy_binary.hd95(pred, gt), medpy_binary.asd(pred, gt))
    if pred.sum() > 0 and gt.sum() == 0:
        return 1.0, 1.0, 0.0, 0.0
    return 0.0, 0.0, 0.0, 0.0


def test_action_convention_reproduces_the_published_protocol():
    shape = (6, 24, 24)
    blob = _ball(shape, (3, 12, 12), 5, (0.5, 1.0, 1.0))
    other = _ball(shape, (3, 10, 13), 6, (0.5, 1.0, 1.0))
    empty = np.zeros(shape, bool)
    for pred, gt in ((blob, other), (blob, empty), (empty, blob), (empty, empty)):
        ours = metrics.binary_metrics(pred, gt, spacing=None, empty="action")
        expected = _ssl4mis_protocol(pred, gt)
        got = (ours["dice"], ours["jaccard"], ours["hd95"], ours["asd"])
        assert got == pytest.approx(expected, **TOL)
