"""Random smooth warp: identity at epsilon 0, labels and confidences follow the image field."""

import torch

from action_ray.augment import (
    integrate_velocity,
    random_displacement,
    random_smooth_warp,
    warp_with_displacement,
)


def _stripes(batch: int, size: int = 48, width: int = 2) -> torch.Tensor:
    """Binary labels in thin diagonal stripes, so even a one-pixel shift changes many labels."""
    rows = torch.arange(size)[:, None]
    cols = torch.arange(size)[None, :]
    pattern = (((rows + cols) // width) % 2).long()
    return pattern.expand(batch, size, size).clone()


def test_zero_epsilon_is_the_identity():
    images = torch.rand(3, 1, 32, 32)
    labels = torch.randint(0, 4, (3, 32, 32))
    conf = torch.rand(3, 32, 32)
    out, out_labels, out_conf = random_smooth_warp(images, labels, conf, p=1.0, epsilon=0.0,
                                                   generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, images, atol=1e-5)
    assert torch.equal(out_labels, labels)
    assert torch.equal(out_conf, conf)
    velocity = torch.zeros(2, 2, 16, 16)
    assert torch.equal(integrate_velocity(velocity, 8), velocity)


def test_labels_and_conf_are_warped_with_the_image_field():
    labels = _stripes(4, width=4)
    images = labels[:, None].float()
    conf = labels.float() * 0.5 + 0.25  # 0.25 on class 0, 0.75 on class 1
    out, out_labels, out_conf = random_smooth_warp(images, labels, conf, p=1.0, epsilon=30.0,
                                                   generator=torch.Generator().manual_seed(1))
    assert (out_labels != labels).float().mean() > 0.05, "the field must move the stripes"
    # where the bilinear image value is exactly 0 or 1 every contributing pixel had that label,
    # so the nearest-sampled label at the same position must agree
    ones, zeros = out[:, 0] > 1 - 1e-5, out[:, 0] < 1e-5
    assert ones.float().mean() > 0.1 and zeros.float().mean() > 0.1
    assert torch.all(out_labels[ones] == 1) and torch.all(out_labels[zeros] == 0)
    assert torch.equal(out_conf, out_labels.float() * 0.5 + 0.25)


def test_warped_labels_stay_in_the_label_set():
    labels = torch.tensor([0, 2, 5, -1])[torch.randint(0, 4, (2, 40, 40))]
    images = torch.rand(2, 1, 40, 40)
    _, out_labels, _ = random_smooth_warp(images, labels, None, p=1.0, epsilon=5.0,
                                          generator=torch.Generator().manual_seed(2))
    assert out_labels.dtype == labels.dtype
    assert set(out_labels.unique().tolist()) <= {0, 2, 5, -1}
    assert not torch.equal(out_labels, labels)


def test_displacement_is_small_and_smooth_at_the_published_epsilon():
    images = torch.zeros(4, 1, 128, 128)
    disp = random_displacement(images, epsilon=1.5, generator=torch.Generator().manual_seed(0))
    pixels = disp.abs() * (128 - 1) / 2  # normalised units -> pixels
    assert 0.05 < pixels.mean() < 3 and pixels.max() < 10, "a few pixels at most"
    # smooth: neighbouring displacements differ far less than the displacements themselves
    step = (disp[..., 1:] - disp[..., :-1]).abs().mean()
    assert step < 0.3 * disp.abs().mean()  # white noise would give about 1.1


def test_probability_is_decided_per_image():
    images = torch.rand(16, 1, 24, 24)
    out, _, _ = random_smooth_warp(images, p=0.5, epsilon=5.0, grid=8,
                                   generator=torch.Generator().manual_seed(3))
    untouched = (out == images).flatten(1).all(1)
    assert 0 < int(untouched.sum()) < 16
    none, _, _ = random_smooth_warp(images, p=0.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(none, images)


def test_warp_3d_and_shared_field():
    labels = _stripes(2, size=16).unsqueeze(1).expand(2, 6, 16, 16).clone()
    images = labels[:, None].float()
    out, out_labels, _ = random_smooth_warp(images, labels, p=1.0, epsilon=60.0, grid=8,
                                            generator=torch.Generator().manual_seed(4))
    assert out.shape == images.shape and out_labels.shape == labels.shape
    assert not torch.equal(out_labels, labels)
    ones = out[:, 0] > 1 - 1e-5
    assert torch.all(out_labels[ones] == 1)
    # a fixed displacement applied to the image and to the labels is the same map
    disp = torch.zeros(1, 2, 8, 8)
    disp[:, 0] = 2 / 7  # shift by one pixel along W (normalised units, align_corners)
    img = torch.arange(64.0).reshape(1, 1, 8, 8)
    moved, moved_labels, _ = warp_with_displacement(disp, img, img[:, 0].long())
    assert torch.allclose(moved[0, 0, :, :-1], img[0, 0, :, 1:], atol=1e-4)
    assert torch.equal(moved_labels[0, :, :-1], img[0, 0, :, 1:].long())


def test_warp_is_deterministic_given_a_seed():
    images = torch.rand(2, 1, 32, 32)
    a = random_smooth_warp(images, p=1.0, generator=torch.Generator().manual_seed(9))[0]
    b = random_smooth_warp(images, p=1.0, generator=torch.Generator().manual_seed(9))[0]
    assert torch.equal(a, b)
