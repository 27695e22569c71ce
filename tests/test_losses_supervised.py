"""Supervised, pseudo-label and Mean Teacher losses against float64 references from the formulas.

The references below are written from method.md §3.5 / §4.3 / §5 with explicit Python loops
over pixels and classes, independent of the vectorised implementations.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from action_ray.losses import (
    dice_loss,
    mean_teacher_consistency,
    pseudo_label_loss,
    sigmoid_rampup,
    supervised_loss,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _pixels(shape):
    return list(itertools.product(*(range(n) for n in shape)))


def _softmax_at(logits, b, pixel):
    scores = [float(logits[(b, c) + pixel]) for c in range(logits.shape[1])]
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


def reference_supervised(logits, target, ignore_index=-1):
    """0.5 * (CE + Dice) with Dice_c = 1 - (2Σpg + 1e-5)/(Σp² + Σg² + 1e-5), mean over c."""
    batch, num_classes = logits.shape[:2]
    spatial = logits.shape[2:]
    ce_sum, ce_count = 0.0, 0
    inter = [0.0] * num_classes
    p_sq = [0.0] * num_classes
    g_sq = [0.0] * num_classes
    for b in range(batch):
        for pixel in _pixels(spatial):
            label = int(target[(b,) + pixel])
            if label == ignore_index:
                continue
            probs = _softmax_at(logits, b, pixel)
            ce_sum -= math.log(probs[label])
            ce_count += 1
            for c in range(num_classes):
                g = 1.0 if c == label else 0.0
                inter[c] += probs[c] * g
                p_sq[c] += probs[c] ** 2
                g_sq[c] += g * g
    dice = [1 - (2 * inter[c] + 1e-5) / (p_sq[c] + g_sq[c] + 1e-5) for c in range(num_classes)]
    ce = ce_sum / max(ce_count, 1)
    return 0.5 * (ce + sum(dice) / num_classes), sum(dice) / num_classes


@pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)])
def test_supervised_loss_matches_formula_2d_and_3d(spatial):
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn((2, 4) + spatial, generator=gen, dtype=torch.float64) * 2
    target = torch.randint(0, 4, (2,) + spatial, generator=gen)
    expected_total, expected_dice = reference_supervised(logits, target)
    assert supervised_loss(logits, target).item() == pytest.approx(expected_total, rel=1e-10)
    assert dice_loss(logits, target).item() == pytest.approx(expected_dice, rel=1e-10)


def test_dice_includes_background_class():
    # An all-background image. Predicting background confidently gives ~0 for every class;
    # predicting class 1 everywhere gives Dice ~1 for background and class 1 and ~0 for class 2,
    # so 2/3 with background counted (it would be 1/2 if background were left out).
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    right = torch.full((1, 3, 4, 4), -30.0, dtype=torch.float64)
    right[:, 0] = 30.0
    wrong = right.clone()
    wrong[:, 0], wrong[:, 1] = -30.0, 30.0
    assert dice_loss(right, target).item() < 1e-6
    # background Dice ~1 and class-1 Dice ~1 out of 3 classes -> about 2/3
    assert dice_loss(wrong, target).item() == pytest.approx(2 / 3, abs=1e-4)


def test_ignore_index_is_honoured_in_ce_and_dice():
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (2, 4, 5), generator=gen)
    target[0, :2] = -1
    expected, _ = reference_supervised(logits.detach(), target)
    loss = supervised_loss(logits, target)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    loss.backward()
    assert torch.all(logits.grad[0, :, :2] == 0), "ignored pixels must get no gradient"
    # changing the logits of ignored pixels must not change the loss
    moved = logits.detach().clone()
    moved[0, :, :2] += 100.0
    assert supervised_loss(moved, target).item() == pytest.approx(loss.item(), rel=1e-12)


def test_all_ignored_batch_is_finite():
    logits = torch.randn(1, 3, 4, 4)
    target = torch.full((1, 4, 4), -1)
    assert torch.isfinite(supervised_loss(logits, target))


def test_supervised_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="target has shape"):
        supervised_loss(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 5, dtype=torch.long))


def reference_pseudo_label(logits, labels, confidence, threshold):
    batch = logits.shape[0]
    spatial = logits.shape[2:]
    terms = []
    for b in range(batch):
        confident = sum(1 for p in _pixels(spatial) if float(confidence[(b,) + p]) >= threshold)
        labelled = sum(1 for p in _pixels(spatial) if int(labels[(b,) + p]) >= 0)
        weight = confident / labelled if labelled else 0.0
        for pixel in _pixels(spatial):
            label = int(labels[(b,) + pixel])
            if label < 0:
                continue
            loss = -math.log(_softmax_at(logits, b, pixel)[label])
            if loss > 0:
                terms.append(weight * loss)
    return sum(terms) / len(terms) if terms else 0.0


def test_pseudo_label_loss_matches_formula():
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(3, 4, 5, 6, generator=gen, dtype=torch.float64) * 3
    labels = torch.randint(0, 4, (3, 5, 6), generator=gen)
    labels[1, 0] = -1  # cutout-style ignored pixels
    confidence = torch.rand(3, 5, 6, generator=gen, dtype=torch.float64) * 0.06 + 0.94
    expected = reference_pseudo_label(logits, labels, confidence, 0.97)
    got = pseudo_label_loss(logits, labels, confidence, strong_threshold=0.97)
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_pseudo_label_loss_drops_zero_loss_pixels_from_the_mean():
    # One image; half the pixels predicted with certainty (CE exactly 0 in float64 is hard to
    # reach, so build it: logits -inf on the wrong classes), half with CE = log 2.
    logits = torch.zeros(1, 2, 1, 4, dtype=torch.float64)
    logits[0, 1, 0, :2] = float("-inf")  # pixels 0,1: class 0 certain -> CE 0
    labels = torch.zeros(1, 1, 4, dtype=torch.long)
    confidence = torch.tensor([[[1.0, 1.0, 0.5, 0.5]]], dtype=torch.float64)
    got = pseudo_label_loss(logits, labels, confidence, strong_threshold=0.97)
    # weight = 2/4, mean over the two positive-loss pixels of 0.5 * log 2
    assert got.item() == pytest.approx(0.5 * math.log(2), rel=1e-12)


def test_pseudo_label_loss_without_positive_pixels_is_zero_not_nan():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    labels = torch.full((2, 4, 4), -1)
    loss = pseudo_label_loss(logits, labels, torch.ones(2, 4, 4))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(logits.grad == 0)


def test_mean_teacher_consistency_matches_formula_and_detaches_teacher():
    gen = torch.Generator().manual_seed(11)
    student = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    total, count = 0.0, 0
    for b in range(2):
        for x in range(4):
            ps = _softmax_at(student.detach(), b, (x,))
            pt = _softmax_at(teacher.detach(), b, (x,))
            for c in range(3):
                total += (ps[c] - pt[c]) ** 2
                count += 1
    loss = mean_teacher_consistency(student, teacher)
    assert loss.item() == pytest.approx(total / count, rel=1e-10)
    loss.backward()
    assert teacher.grad is None and student.grad is not None


def test_sigmoid_rampup_shape():
    assert sigmoid_rampup(0, 200) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(100, 200) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(200, 200) == 1.0
    assert sigmoid_rampup(500, 200) == 1.0
    assert sigmoid_rampup(-3, 200) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(7, 0) == 1.0
    values = [sigmoid_rampup(s, 50) for s in range(0, 60, 5)]
    assert values == sorted(values)
