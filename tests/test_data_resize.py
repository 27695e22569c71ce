"""The vectorised slice resize to the training size."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from action_ray.data.resize import resize_slices


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
