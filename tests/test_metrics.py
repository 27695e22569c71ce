"""Behaviour of action_ray.metrics without a reference library: units, conventions, validation, summaries."""

from __future__ import annotations

import math

import numpy as np
import pytest

from action_ray import metrics


def _voxel(shape, index) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[index] = True
    return mask


def _square(shape, lo, hi) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return mask


# --------------------------------------------------------------------------- units


def test_distances_follow_spacing_in_array_axis_order():
    """Two single voxels 3 apart on axis 0 and 4 apart on axis 1: distance sqrt((3 s0)^2 + (4 s1)^2)."""
    a, b = _voxel((10, 10), (2, 3)), _voxel((10, 10), (5, 7))
    assert metrics.binary_metrics(a, b)["hd95"] == pytest.approx(5.0)
    for spacing in ((2.0, 0.5), (0.5, 2.0)):
        expected = math.hypot(3 * spacing[0], 4 * spacing[1])
        result = metrics.binary_metrics(a, b, spacing=spacing)
        assert result["hd95"] == pytest.approx(expected)
        assert result["asd"] == pytest.approx(expected)
        assert result["dice"] == 0.0


def test_unit_spacing_equals_voxels_and_isotropic_spacing_scales_distances():
    rng = np.random.default_rng(0)
    pred, gt = rng.random((8, 16, 16)) < 0.2, rng.random((8, 16, 16)) < 0.2
    voxels = metrics.binary_metrics(pred, gt)
    assert metrics.binary_metrics(pred, gt, spacing=(1, 1, 1)) == voxels
    scaled = metrics.binary_metrics(pred, gt, spacing=(2.5, 2.5, 2.5))
    for key in ("hd95", "asd", "assd"):
        assert scaled[key] == pytest.approx(2.5 * voxels[key])
    assert scaled["dice"] == voxels["dice"]


def test_thick_slices_make_mm_differ_from_voxels():
    """A prediction one slice off: 1 voxel, but 8 mm with 8 mm slices."""
    gt = _square((6, 20, 20), (2, 5, 5), (3, 15, 15))
    pred = _square((6, 20, 20), (3, 5, 5), (4, 15, 15))
    (row,) = metrics.case_metrics(pred.astype(np.uint8), gt.astype(np.uint8), [1], spacing=(8.0, 0.7, 0.7))
    assert row["hd95_vox"] == pytest.approx(1.0)
    assert row["hd95_mm"] == pytest.approx(8.0)
    assert row["asd_mm"] == pytest.approx(8.0)


def test_identical_masks_are_perfect():
    mask = _square((12, 12), (2, 3), (9, 10))
    assert metrics.binary_metrics(mask, mask, spacing=(1.3, 0.4)) == {
        "dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0, "assd": 0.0}


def test_asd_is_directed_and_assd_symmetric():
    """A small square inside a big one: its surface is far from the big surface, not vice versa alike."""
    small, big = _square((30, 30), (12, 12), (18, 18)), _square((30, 30), (5, 5), (25, 25))
    forward, backward = metrics.asd(small, big), metrics.asd(big, small)
    assert forward != pytest.approx(backward)
    assert metrics.assd(small, big) == pytest.approx(metrics.assd(big, small))
    assert metrics.binary_metrics(small, big)["asd"] == pytest.approx(forward)
    assert metrics.hd95(small, big) == pytest.approx(metrics.hd95(big, small))


def test_small_lesion_in_a_large_volume_gives_the_same_numbers_as_a_tight_array():
    """Distances in a 64x256x256 array equal those of the same masks in a tight array."""
    small_pred, small_gt = _square((5, 8, 8), (1, 1, 1), (4, 6, 5)), _square((5, 8, 8), (1, 2, 2), (4, 7, 7))
    big_pred, big_gt = np.zeros((64, 256, 256), bool), np.zeros((64, 256, 256), bool)
    big_pred[30:35, 100:108, 200:208] = small_pred
    big_gt[30:35, 100:108, 200:208] = small_gt
    spacing = (2.5, 0.8, 0.8)
    assert metrics.binary_metrics(big_pred, big_gt, spacing) == pytest.approx(
        metrics.binary_metrics(small_pred, small_gt, spacing))


# --------------------------------------------------------------------------- empty masks

EMPTY = np.zeros((4, 10, 10), bool)
BLOB = _square((4, 10, 10), (1, 2, 2), (3, 7, 7))


@pytest.mark.parametrize("pred,gt,expected", [
    (BLOB, EMPTY, {"dice": 0.0, "jaccard": 0.0, "hd95": math.nan, "asd": math.nan, "assd": math.nan}),
    (EMPTY, BLOB, {"dice": 0.0, "jaccard": 0.0, "hd95": math.nan, "asd": math.nan, "assd": math.nan}),
    (EMPTY, EMPTY, {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0, "assd": 0.0}),
], ids=["pred-only", "gt-only", "both-empty"])
def test_strict_convention(pred, gt, expected):
    result = metrics.binary_metrics(pred, gt, spacing=(3.0, 1.0, 1.0))
    assert result == pytest.approx(expected, nan_ok=True)


@pytest.mark.parametrize("pred,gt,expected", [
    (BLOB, EMPTY, (1.0, 1.0, 0.0, 0.0)),
    (EMPTY, BLOB, (0.0, 0.0, 0.0, 0.0)),
    (EMPTY, EMPTY, (0.0, 0.0, 0.0, 0.0)),
], ids=["pred-only", "gt-only", "both-empty"])
def test_action_convention(pred, gt, expected):
    result = metrics.binary_metrics(pred, gt, empty="action")
    assert (result["dice"], result["jaccard"], result["hd95"], result["asd"]) == expected


def test_conventions_agree_when_both_masks_are_present():
    other = _square((4, 10, 10), (0, 3, 1), (3, 9, 6))
    assert metrics.binary_metrics(BLOB, other, empty="action") == metrics.binary_metrics(BLOB, other)


def test_case_metrics_flags_empty_masks():
    pred = np.zeros((4, 10, 10), np.int64)
    gt = np.zeros((4, 10, 10), np.int64)
    pred[BLOB] = 1
    gt[BLOB] = 1
    gt[0, 0, 0] = 2          # class 2 missed entirely
    pred[3, 9, 9] = 3        # class 3 predicted but absent
    rows = {r["class"]: r for r in metrics.case_metrics(pred, gt, [1, 2, 3, 4], spacing=(2.0, 1.0, 1.0))}
    assert (rows[1]["pred_empty"], rows[1]["gt_empty"], rows[1]["dice"]) == (False, False, 1.0)
    assert (rows[2]["pred_empty"], rows[2]["gt_empty"]) == (True, False)
    assert (rows[3]["pred_empty"], rows[3]["gt_empty"]) == (False, True)
    assert (rows[4]["pred_empty"], rows[4]["gt_empty"], rows[4]["dice"], rows[4]["hd95_mm"]) == (True, True, 1.0, 0.0)
    assert math.isnan(rows[2]["hd95_mm"]) and math.isnan(rows[3]["asd_vox"])
    assert (rows[2]["intersection"], rows[2]["pred_voxels"], rows[2]["gt_voxels"]) == (0, 0, 1)


def test_surface_distances_refuse_empty_masks():
    with pytest.raises(ValueError, match="b is empty"):
        metrics.surface_distances(BLOB, EMPTY)
    with pytest.raises(ValueError, match="empty"):
        metrics.hd95(EMPTY, BLOB)


# --------------------------------------------------------------------------- 2-D and case_metrics


def test_case_metrics_2d_matches_binary_metrics_per_class():
    rng = np.random.default_rng(3)
    gt = rng.integers(0, 3, size=(24, 20))
    pred = np.where(rng.random((24, 20)) < 0.8, gt, rng.integers(0, 3, size=(24, 20)))
    spacing = (1.5, 0.75)
    for row in metrics.case_metrics(pred, gt, classes=(1, 2), spacing=spacing):
        p, g = pred == row["class"], gt == row["class"]
        mm, vox = metrics.binary_metrics(p, g, spacing), metrics.binary_metrics(p, g)
        assert row["dice"] == mm["dice"] and row["jaccard"] == mm["jaccard"]
        assert (row["hd95_mm"], row["asd_mm"], row["assd_mm"]) == (mm["hd95"], mm["asd"], mm["assd"])
        assert (row["hd95_vox"], row["asd_vox"], row["assd_vox"]) == (vox["hd95"], vox["asd"], vox["assd"])
        assert row["intersection"] == int((p & g).sum())


def test_case_metrics_without_spacing_gives_nan_mm_and_real_voxels():
    gt = np.zeros((10, 10), np.uint8)
    gt[2:6, 2:6] = 1
    pred = np.roll(gt, 2, axis=1)
    (row,) = metrics.case_metrics(pred, gt, [1], spacing=None)
    assert math.isnan(row["hd95_mm"]) and math.isnan(row["asd_mm"])
    assert row["hd95_vox"] == pytest.approx(metrics.hd95(pred == 1, gt == 1))


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("call,message", [
    (lambda: metrics.binary_metrics(np.zeros((4, 4), bool), np.zeros((4, 5), bool)), r"shape \(4, 4\).*\(4, 5\)"),
    (lambda: metrics.binary_metrics(np.array([[0, 2]]), np.array([[0, 1]])), r"pred: expected a binary mask.*\[2\]"),
    (lambda: metrics.binary_metrics(np.zeros((4, 4), bool), np.full((4, 4), 0.5)), r"gt: expected a binary mask"),
    (lambda: metrics.binary_metrics(BLOB, BLOB, spacing=(1.0, 1.0)), r"expected 3 values.*got 2"),
    (lambda: metrics.binary_metrics(BLOB, BLOB, spacing=(1.0, 0.0, 1.0)), r"positive finite"),
    (lambda: metrics.binary_metrics(BLOB, BLOB, spacing=(1.0, math.nan, 1.0)), r"positive finite"),
    (lambda: metrics.binary_metrics(BLOB, BLOB, empty="medpy"), r"expected one of \['action', 'strict'\]"),
    (lambda: metrics.case_metrics(np.zeros((4, 4)), np.zeros((4, 4), int), [1], None),
     r"pred_labels: expected an integer"),
    (lambda: metrics.case_metrics(np.zeros((4, 4), int), np.zeros((4, 4), int), [], None), r"at least one"),
    (lambda: metrics.case_metrics(np.zeros((4, 4), int), np.zeros((4, 4), int), [1, 1], None), r"once"),
    (lambda: metrics.case_metrics(np.zeros((4, 4), int), np.zeros((3, 4), int), [1], None), r"shape"),
    (lambda: metrics.summarise([{"dice": 1.0}]), r"'class' key"),
], ids=["shape", "non-binary-int", "non-binary-float", "spacing-length", "spacing-zero", "spacing-nan",
        "convention", "float-labels", "no-classes", "duplicate-classes", "label-shape", "row-without-class"])
def test_bad_input_is_named_in_the_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_zero_one_numbers_are_accepted_as_masks():
    as_bool = metrics.binary_metrics(BLOB, np.roll(BLOB, 1, axis=2))
    as_float = metrics.binary_metrics(BLOB.astype(np.float32), np.roll(BLOB, 1, axis=2).astype(np.uint8))
    assert as_bool == as_float


# --------------------------------------------------------------------------- summarise


def _row(c, dice, hd95, *, pred_empty=False, gt_empty=False, inter=0, pv=0, gv=0):
    return {"class": c, "dice": dice, "jaccard": dice / (2 - dice), "hd95_mm": hd95, "asd_mm": hd95 / 4,
            "assd_mm": hd95 / 3, "hd95_vox": hd95, "asd_vox": hd95 / 4, "assd_vox": hd95 / 3,
            "pred_empty": pred_empty, "gt_empty": gt_empty,
            "intersection": inter, "pred_voxels": pv, "gt_voxels": gv}


def test_summarise_means_excludes_nan_and_counts_it():
    rows = [
        _row(1, 0.9, 2.0, inter=90, pv=100, gv=100),
        _row(1, 0.7, 6.0, inter=70, pv=100, gv=100),
        _row(2, 0.5, 4.0, inter=5, pv=10, gv=10),
        _row(2, 0.0, math.nan, pred_empty=True, gv=1000),   # a large lesion missed entirely
        _row(2, 0.0, math.nan, gt_empty=True, pv=3),         # a false positive in a lesion-free case
    ]
    summary = metrics.summarise(rows)
    one, two = summary["per_class"][1], summary["per_class"][2]
    assert one["dice"] == pytest.approx(0.8) and one["hd95_mm"] == pytest.approx(4.0)
    assert one["n_cases"] == 2 and one["excluded"]["hd95_mm"] == 0
    assert two["dice"] == pytest.approx(0.5 / 3)
    assert two["hd95_mm"] == pytest.approx(4.0) and two["excluded"]["hd95_mm"] == 2
    assert two["excluded"]["dice"] == 0
    assert (two["n_pred_empty"], two["n_gt_empty"]) == (1, 1)
    # pooled Dice weighs the big missed lesion: 2*5 / (13 + 1010)
    assert two["pooled_dice"] == pytest.approx(10 / 1023)
    assert one["pooled_dice"] == pytest.approx(320 / 400)
    assert summary["overall"]["dice"] == pytest.approx((0.8 + 0.5 / 3) / 2)
    assert summary["overall"]["hd95_mm"] == pytest.approx(4.0)
    assert summary["overall"]["pooled_dice"] == pytest.approx((0.8 + 10 / 1023) / 2)


def test_summarise_all_nan_class_is_nan_and_left_out_of_overall():
    rows = [_row(1, 0.6, 3.0, inter=3, pv=5, gv=5), _row(2, 0.0, math.nan, pred_empty=True, gv=4)]
    summary = metrics.summarise(rows)
    assert math.isnan(summary["per_class"][2]["hd95_mm"])
    assert summary["overall"]["hd95_mm"] == pytest.approx(3.0)
    assert summary["overall"]["classes_excluded"]["hd95_mm"] == 1


def test_summarise_on_case_metrics_output_end_to_end():
    """Tumour-like class present in one case of three: pooled Dice is defined, per-case has NaNs."""
    shape = (6, 16, 16)
    cases = []
    for k in range(3):
        gt = np.zeros(shape, np.int64)
        gt[1:5, 2:14, 2:14] = 1
        pred = gt.copy()
        pred[1:5, 2:14, 13] = 0
        if k == 0:
            gt[2:4, 6:9, 6:9] = 2
            pred[2:4, 6:9, 7:10] = 2
        cases.append((pred, gt))
    rows = [r for pred, gt in cases for r in metrics.case_metrics(pred, gt, [1, 2], spacing=(3.0, 1.0, 1.0))]
    summary = metrics.summarise(rows)
    tumour = summary["per_class"][2]
    assert tumour["n_cases"] == 3 and tumour["n_gt_empty"] == 2
    assert tumour["excluded"]["hd95_mm"] == 0          # both-empty cases count as distance 0 under strict
    assert tumour["dice"] == pytest.approx((2 / 3 + 1 + 1) / 3)
    assert tumour["pooled_dice"] == pytest.approx(2 / 3)
    rows_action = [r for pred, gt in cases
                   for r in metrics.case_metrics(pred, gt, [2], (3.0, 1.0, 1.0), empty="action")]
    assert metrics.summarise(rows_action)["per_class"][2]["dice"] == pytest.approx((2 / 3) / 3)
