"""Mixing of unlabelled batches: masks shaped as specified, and targets mixed with the image."""

import pytest
import torch

from action_ray.augment import class_mask, classmix, cutmix, cutout, mix, random_box_mask


def _index_batch(batch: int, size: int = 64, depth: int | None = None):
    """Images whose every pixel holds the image index; labels = index; conf = index / 10."""
    spatial = (size, size) if depth is None else (depth, size, size)
    index = torch.arange(batch).reshape(batch, *([1] * len(spatial))).expand(batch, *spatial)
    return index[:, None].float().clone(), index.clone(), index.float() / 10


@pytest.mark.parametrize("seed", range(5))
def test_cutmix_box_is_half_the_image_and_targets_follow_the_image(seed):
    images, labels, conf = _index_batch(6)
    out_images, out_labels, out_conf = cutmix(images, labels, conf,
                                              torch.Generator().manual_seed(seed))
    own = torch.arange(6)[:, None, None]
    from_next = out_labels == (own + 1) % 6
    assert torch.all((out_labels == own) | from_next)
    # labels and confidences were mixed with exactly the image's mask
    assert torch.equal(out_images[:, 0], out_labels.float())
    assert torch.allclose(out_conf, out_labels.float() / 10)
    for i in range(6):
        box = from_next[i]
        rows, cols = box.any(dim=1), box.any(dim=0)
        assert torch.equal(box, rows[:, None] & cols[None, :]), "the mixed region is a rectangle"
        width = int(cols.sum())
        assert 64 // 2 + 1 <= width <= 63
        assert int(rows.sum()) == round(64 * 64 / 2 / width)
        assert 0.47 <= box.float().mean().item() <= 0.53


def test_box_positions_vary_and_cover_the_whole_image():
    images = torch.zeros(1024, 1, 32, 32)
    keep = random_box_mask(images, torch.Generator().manual_seed(3))
    inside = ~keep
    assert inside.any(dim=0).all(), "every pixel should be inside some box over 1024 draws"
    assert not torch.equal(inside[0], inside[1])


def test_cutmix_3d_box_spans_the_depth():
    images, labels, conf = _index_batch(3, size=16, depth=5)
    out_images, out_labels, _ = cutmix(images, labels, conf, torch.Generator().manual_seed(0))
    assert out_images.shape == images.shape
    assert torch.equal(out_labels, out_labels[:, :1].expand_as(out_labels))
    assert torch.equal(out_images[:, 0], out_labels.float())


def _class_stripes(batch: int, classes_per_image: list[list[int]], size: int = 24):
    labels = torch.zeros(batch, size, size, dtype=torch.long)
    for i, present in enumerate(classes_per_image):
        bands = torch.arange(size) * len(present) // size  # vertical bands, one per class
        labels[i] = torch.tensor(present)[bands][None, :].expand(size, size)
    return labels


@pytest.mark.parametrize("seed", range(8))
def test_classmix_keeps_exactly_half_of_the_present_classes(seed):
    present = [[0, 1, 2, 3], [1, 3, 4], [2], [0, 4], [0, 1, 2, 3, 4]]
    labels = _class_stripes(5, present)
    labels[4, :2] = -1  # ignored pixels are never kept
    keep = class_mask(labels, 5, torch.Generator().manual_seed(seed))
    for i, classes in enumerate(present):
        chosen = set(labels[i][keep[i]].tolist())
        assert len(chosen) == len(classes) // 2
        assert chosen <= set(classes)
        expected = torch.zeros_like(keep[i])
        for c in chosen:
            expected |= labels[i] == c
        assert torch.equal(keep[i], expected), "all pixels of a chosen class, nothing else"


def test_classmix_choice_is_random_over_classes():
    labels = _class_stripes(1, [[0, 1, 2, 3]]).expand(200, -1, -1)
    keep = class_mask(labels, 4, torch.Generator().manual_seed(0))
    chosen_counts = torch.stack([(keep & (labels == c)).flatten(1).any(1) for c in range(4)])
    frequency = chosen_counts.float().mean(dim=1)
    assert torch.all((frequency > 0.35) & (frequency < 0.65)), frequency


def test_classmix_mixes_images_labels_and_conf_with_its_mask():
    labels = _class_stripes(4, [[0, 1], [1, 2, 3], [0, 3], [0, 1, 2, 3]])
    images = (labels + 10 * torch.arange(4)[:, None, None]).float()[:, None]
    conf = images[:, 0] / 100
    generator = torch.Generator().manual_seed(7)
    out_images, out_labels, out_conf = classmix(images, labels, conf, generator, num_classes=4)
    keep = class_mask(labels, 4, torch.Generator().manual_seed(7))
    nxt = torch.roll(torch.arange(4), -1)
    assert torch.equal(out_labels, torch.where(keep, labels, labels[nxt]))
    assert torch.equal(out_images[:, 0], torch.where(keep, images[:, 0], images[nxt, 0]))
    assert torch.equal(out_conf, torch.where(keep, conf, conf[nxt]))


def test_cutout_zeroes_the_box_and_ignores_its_labels():
    images = torch.rand(4, 1, 40, 40) + 0.5
    labels = torch.randint(0, 3, (4, 40, 40))
    conf = torch.rand(4, 40, 40) + 0.1
    out_images, out_labels, out_conf = cutout(images, labels, conf,
                                              torch.Generator().manual_seed(1))
    cut = out_images[:, 0] == 0
    assert torch.equal(out_labels == -1, cut)
    assert torch.equal(out_conf == 0, cut)
    assert torch.equal(out_labels[~cut], labels[~cut])
    assert 0.45 < cut.float().mean().item() < 0.55


def test_mix_dispatch_and_errors():
    images, labels, conf = _index_batch(2, size=8)
    same = mix("none", images, labels, conf)
    assert same[0] is images and same[1] is labels
    a = mix("cutmix", images, labels, conf, torch.Generator().manual_seed(0))
    b = cutmix(images, labels, conf, torch.Generator().manual_seed(0))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="num_classes"):
        mix("classmix", images, labels, conf)
    with pytest.raises(ValueError, match="unknown mix kind"):
        mix("mixup", images, labels, conf)
    with pytest.raises(ValueError, match="labels"):
        cutmix(images, labels[:, :4], conf)


def test_mixing_is_deterministic_given_a_seed():
    images, labels, conf = torch.rand(4, 1, 32, 32), torch.randint(0, 4, (4, 32, 32)), None
    for fn in (cutmix, cutout, lambda *a: classmix(*a, num_classes=4)):
        first = fn(images, labels, conf, torch.Generator().manual_seed(5))
        again = fn(images, labels, conf, torch.Generator().manual_seed(5))
        other = fn(images, labels, conf, torch.Generator().manual_seed(6))
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
        assert not torch.equal(first[0], other[0])
