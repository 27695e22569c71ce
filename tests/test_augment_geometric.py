"""rot90/flip as exact permutations, and small rotations with nearest-sampled labels."""

import math

import pytest
import torch

from action_ray.augment import (
    random_rot_flip,
    random_rotation,
    rot_flip,
    rotate,
)


def _reference(x: torch.Tensor, t: int) -> torch.Tensor:
    out = torch.rot90(x, t % 4, dims=(-2, -1))
    return out.flip(-1) if t >= 4 else out


def test_rot_flip_matches_torch_rot90_and_flip_per_image():
    images = torch.rand(8, 2, 12, 12)
    labels = torch.randint(0, 5, (8, 12, 12))
    ids = torch.arange(8)
    out, out_labels, _ = rot_flip(images, ids, labels)
    for i in range(8):
        assert torch.equal(out[i], _reference(images[i], i))
        assert torch.equal(out_labels[i], _reference(labels[i], i))


def rot_flip_inverse(ids: torch.Tensor) -> torch.Tensor:
    """Ids of the inverse transforms: rotations invert to (4 - k) mod 4, mirrors to themselves."""
    k, flip = ids % 4, ids // 4
    return torch.where(flip == 1, ids, (4 - k) % 4)


def test_rot_flip_is_exactly_invertible_2d_and_3d():
    ids = torch.randint(0, 8, (6,), generator=torch.Generator().manual_seed(0))
    for shape in ((6, 1, 10, 10), (6, 1, 3, 10, 10)):
        x = torch.rand(shape)
        conf = torch.rand(shape[:1] + shape[2:])
        there = rot_flip(x, ids, conf=conf)
        back = rot_flip(there[0], rot_flip_inverse(ids), conf=there[2])
        assert torch.equal(back[0], x) and torch.equal(back[2], conf)
    volume = torch.rand(2, 1, 3, 10, 10)
    out, _, _ = rot_flip(volume, torch.tensor([1, 6]))
    for d in range(3):  # every depth slice turns the same way
        assert torch.equal(out[0, 0, d], _reference(volume[0, 0, d], 1))
        assert torch.equal(out[1, 0, d], _reference(volume[1, 0, d], 6))


def test_random_rot_flip_moves_labels_with_images_and_covers_the_group():
    labels = torch.randint(0, 50, (64, 9, 9))
    images = labels[:, None].float()
    out, out_labels, out_conf = random_rot_flip(images, labels, labels.float(), p=1.0,
                                                generator=torch.Generator().manual_seed(1))
    assert torch.equal(out[:, 0], out_labels.float()) and torch.equal(out_conf, out[:, 0])
    reached = {t for i in range(64) for t in range(8)
               if torch.equal(out_labels[i], _reference(labels[i], t))}
    assert reached == set(range(8))
    same, _, _ = random_rot_flip(images, p=0.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(same, images)


def test_random_rot_flip_keeps_non_square_shapes():
    images = torch.rand(16, 1, 6, 10)
    out, _, _ = random_rot_flip(images, p=1.0, generator=torch.Generator().manual_seed(2))
    assert out.shape == images.shape
    for i in range(16):
        assert any(torch.equal(out[i], _reference(images[i], t)) for t in (0, 2, 4, 6))


def test_rotate_by_quarter_turn_equals_rot90():
    images = torch.rand(2, 1, 11, 11)
    labels = torch.randint(0, 4, (2, 11, 11))
    angles = torch.tensor([math.pi / 2, -math.pi / 2])
    out, out_labels, _ = rotate(images, angles, labels)
    for i, k in enumerate((1, -1)):
        assert torch.allclose(out[i], torch.rot90(images[i], k, dims=(-2, -1)), atol=1e-4)
        assert torch.equal(out_labels[i], torch.rot90(labels[i], k, dims=(-2, -1)))


@pytest.mark.parametrize("shape", [(4, 1, 40, 40), (2, 1, 4, 24, 30)])
def test_random_rotation_keeps_labels_aligned_and_in_the_label_set(shape):
    labels = (torch.rand(shape[:1] + shape[2:], generator=torch.Generator().manual_seed(0))
              > 0.5).long() * 3
    images = labels[:, None].float() / 3
    out, out_labels, _ = random_rotation(images, labels, max_degrees=20, p=1.0,
                                         generator=torch.Generator().manual_seed(5))
    assert set(out_labels.unique().tolist()) <= {0, 3}
    assert not torch.equal(out_labels, labels)
    ones = out[:, 0] > 1 - 1e-5
    assert ones.any() and torch.all(out_labels[ones] == 3)
    still, still_labels, _ = random_rotation(images, labels, max_degrees=0.0, p=1.0)
    assert torch.allclose(still, images, atol=1e-5) and torch.equal(still_labels, labels)


def test_zoom_magnifies_about_the_centre_and_moves_labels_with_the_image():
    images = torch.zeros(2, 1, 32, 32)
    images[..., 12:20, 12:20] = 1.0  # an 8 × 8 square at the centre
    labels = (images[:, 0] > 0).long() * 2
    out, out_labels, _ = rotate(images, torch.zeros(2), labels, scales=torch.tensor([2.0, 0.5]))
    assert out_labels[0].eq(2).sum() == 16 * 16 and out_labels[1].eq(2).sum() == 4 * 4
    assert torch.equal(out_labels[0, 8:24, 8:24], torch.full((16, 16), 2))  # still centred
    assert torch.all(out[:, 0][out_labels == 2] > 0.5) and torch.all(out[:, 0][out_labels == 0] < 0.5)


def test_random_zoom_draws_scales_in_range_and_leaves_the_stream_alone_when_off():
    images = torch.zeros(64, 1, 33, 33)
    images[..., 12:21, 12:21] = 1.0
    labels = (images[:, 0] > 0).long()
    _, zoomed, _ = random_rotation(images, labels, max_degrees=0.0, p=0.0, scale_range=(0.7, 1.4),
                                   scale_p=1.0, generator=torch.Generator().manual_seed(1))
    areas = zoomed.sum(dim=(1, 2)).float() / labels[0].sum()
    assert areas.min() >= 0.7**2 * 0.7 and areas.max() <= 1.4**2 * 1.3  # area ∝ scale², ±1 px rims
    assert areas.min() < 0.8 and areas.max() > 1.4  # both ends of the range are reached
    plain = random_rotation(images, labels, max_degrees=20, p=0.5, generator=torch.Generator().manual_seed(2))
    unit = random_rotation(images, labels, max_degrees=20, p=0.5, generator=torch.Generator().manual_seed(2),
                           scale_range=(1.0, 1.0))
    assert torch.equal(plain[0], unit[0]) and torch.equal(plain[1], unit[1])
    with pytest.raises(ValueError, match="scale_range"):
        random_rotation(images, labels, scale_range=(1.2, 0.9))
