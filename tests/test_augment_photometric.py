"""Float photometric ops against their formulas and scipy, and the pre-training views."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from action_ray.augment import (
    adjust_brightness_contrast,
    blur_with_sigma,
    brightness_contrast,
    gaussian_blur,
    pretrain_views,
)


def _reference_jitter(x, b, c, contrast_first, clamp):
    """One image at a time, written out from the definitions."""
    def bright(img):
        out = img * b
        return out if clamp is None else out.clamp(*clamp)

    def contr(img):
        out = c * img + (1 - c) * img.mean()
        return out if clamp is None else out.clamp(*clamp)

    return bright(contr(x)) if contrast_first else contr(bright(x))


@pytest.mark.parametrize("clamp", [(0.0, 1.0), None])
def test_brightness_contrast_equals_the_formula_for_fixed_factors(clamp):
    torch.manual_seed(0)
    x = torch.rand(4, 1, 16, 16)
    b = torch.tensor([0.8, 1.2, 1.25, 1.0])
    c = torch.tensor([1.2, 0.75, 1.1, 0.9])
    first = torch.tensor([True, False, True, False])
    out = adjust_brightness_contrast(x, b, c, first, clamp)
    for i in range(4):
        expected = _reference_jitter(x[i], b[i], c[i], bool(first[i]), clamp)
        assert torch.allclose(out[i], expected, atol=1e-6)
    if clamp is not None:
        # with clamping the order matters, so the per-image order is really used
        swapped = adjust_brightness_contrast(x, b, c, ~first, clamp)
        assert not torch.allclose(out, swapped)


def test_brightness_contrast_probability_and_ranges():
    x = torch.rand(8, 1, 16, 16)
    untouched = brightness_contrast(x, p=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(untouched, x) and untouched is not x
    fixed = brightness_contrast(x, p=1.0, brightness=(1.1, 1.1), contrast=(1.0, 1.0),
                                generator=torch.Generator().manual_seed(0))
    assert torch.allclose(fixed, (x * 1.1).clamp(0, 1), atol=1e-6)
    some = brightness_contrast(x, p=0.5, generator=torch.Generator().manual_seed(1))
    changed = (some != x).flatten(1).any(1)
    assert 0 < int(changed.sum()) < 8, "p=0.5 is decided per image"


def test_per_image_sigma_blur_matches_scipy_2d_and_3d():
    torch.manual_seed(0)
    x2 = torch.rand(3, 2, 20, 17, dtype=torch.float64)
    sigmas = torch.tensor([0.15, 0.6, 1.15], dtype=torch.float64)
    out = blur_with_sigma(x2, sigmas, radius=5)
    for i in range(3):
        for ch in range(2):
            ref = gaussian_filter(x2[i, ch].numpy(), float(sigmas[i]), mode="nearest", radius=5)
            np.testing.assert_allclose(out[i, ch].numpy(), ref, atol=1e-10)
    x3 = torch.rand(2, 1, 6, 9, 8, dtype=torch.float64)
    out3 = blur_with_sigma(x3, torch.tensor([0.4, 1.0], dtype=torch.float64), radius=4)
    for i, s in enumerate((0.4, 1.0)):
        ref = gaussian_filter(x3[i, 0].numpy(), s, mode="nearest", radius=4)
        np.testing.assert_allclose(out3[i, 0].numpy(), ref, atol=1e-10)


def test_gaussian_blur_draws_one_sigma_per_image():
    x = torch.zeros(6, 1, 15, 15)
    x[:, :, 7, 7] = 1.0  # an impulse: the blurred centre value reveals the sigma used
    out = gaussian_blur(x, p=1.0, generator=torch.Generator().manual_seed(0))
    centres = out[:, 0, 7, 7]
    assert torch.all(centres < 1.0)
    assert len(set(np.round(centres.numpy(), 6))) == 6, "each image has its own sigma"
    # a normalised kernel away from the border keeps the total intensity
    assert torch.allclose(out.sum(dim=(1, 2, 3)), torch.ones(6), atol=1e-5)
    none = gaussian_blur(x, p=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(none, x)


def test_pretrain_views_follow_section_5_1_and_never_alias():
    x = torch.rand(4, 1, 16, 16)
    original = x.clone()
    seen = {"jitter": 0, "no_jitter": 0, "blur": 0, "no_blur": 0}
    for seed in range(16):
        student, teacher = pretrain_views(x, torch.Generator().manual_seed(seed))
        assert torch.equal(x, original), "the input batch is never modified"
        assert student.data_ptr() != teacher.data_ptr()
        assert student.data_ptr() != x.data_ptr() and teacher.data_ptr() != x.data_ptr()
        seen["jitter" if not torch.equal(student, x) else "no_jitter"] += 1
        if torch.equal(teacher, student):
            seen["no_blur"] += 1
        else:
            seen["blur"] += 1
            # the teacher is the student view blurred with a single sigma for the batch
            candidates = torch.linspace(0.15, 1.15, 401)
            blurred = blur_with_sigma(student.repeat(401, 1, 1, 1),
                                      candidates.repeat_interleave(4), radius=5)
            errors = (blurred.reshape(401, 4, -1) - teacher.reshape(1, 4, -1)).abs()
            assert errors.amax(dim=(1, 2)).min() < 2e-3, "one sigma fits the whole batch"
        before = teacher.clone()
        student.add_(1.0)  # an in-place edit of one view must not reach the other
        assert torch.equal(teacher, before)
    assert min(seen.values()) >= 3, seen


def test_pretrain_views_are_deterministic_given_a_seed():
    x = torch.rand(4, 1, 16, 16)
    a = pretrain_views(x, torch.Generator().manual_seed(3))
    b = pretrain_views(x, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_bad_ranges_are_reported_by_name():
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(x, sigma=(0.0, 1.0))
    with pytest.raises(ValueError, match="brightness"):
        brightness_contrast(x, brightness=(1.2, 0.8))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        gaussian_blur(x[0])
