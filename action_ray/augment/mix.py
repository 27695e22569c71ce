"""Mixing of an unlabelled batch with its pseudo-labels and confidences (method.md §4.2).

Image i is mixed with image (i + 1) mod B of the same batch. One boolean mask ``keep`` of shape
(B, *S) per batch says, per pixel, whether the pixel comes from image i (True) or from its
neighbour (False); images, pseudo-labels and confidences are all mixed with that same mask, so
the targets always describe the pixels the student sees.

Every mask is built without a Python loop over images: boxes by comparing coordinate grids with
per-image bounds, class selections by a random per-(image, class) ranking and a gather.
"""

from __future__ import annotations

import torch

from action_ray.augment.common import check_maps, spatial_ndim, uniform
from action_ray.losses.targets import IGNORE_LABEL

MIX_KINDS = ("cutmix", "classmix", "cutout", "none")


def random_box_mask(
    images: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-image boxes covering about half of each image; returns keep = outside the box.

    images: (B, C, H, W) or (B, C, D, H, W); only the shape and device are used.
    Returns a bool tensor (B, H, W) or (B, D, H, W) that is False inside the box.

    Box width w ~ U_int[W/2 + 1, W - 1], height h = round(H*W/2 / w) (clipped to H), position
    uniform among the placements that fit. In 3-D the box spans the whole depth, so it still
    covers about half the volume and the in-plane statistics match the 2-D recipe.
    """
    ndim = spatial_ndim(images)
    batch = images.shape[0]
    height, width = images.shape[-2:]
    low = width // 2 + 1
    if low > width - 1 or height < 2:
        raise ValueError(
            f"box mixing needs H >= 2 and W >= 3 so that a half-image box fits; got H={height}, "
            f"W={width}"
        )
    draws = uniform((batch, 3), images, generator)  # (B, 3): width, row start, column start
    box_w = (low + torch.floor(draws[:, 0] * (width - low))).clamp(max=width - 1)
    box_h = torch.round(height * width / 2 / box_w).clamp(1, height)
    top = torch.floor(draws[:, 1] * (height - box_h + 1))
    left = torch.floor(draws[:, 2] * (width - box_w + 1))

    rows = torch.arange(height, device=images.device, dtype=torch.float32)
    cols = torch.arange(width, device=images.device, dtype=torch.float32)
    in_rows = (rows >= top[:, None]) & (rows < (top + box_h)[:, None])  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + box_w)[:, None])  # (B, W)
    inside = in_rows[:, :, None] & in_cols[:, None, :]  # (B, H, W)
    if ndim == 3:
        inside = inside[:, None].expand(batch, images.shape[2], height, width)
    return ~inside


def class_mask(
    labels: torch.Tensor, num_classes: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """ClassMix selection: keep the pixels whose label is in a random half of the present classes.

    labels: (B, *S) integer, values in [0, num_classes) or negative (ignored, never kept).
    Returns bool (B, *S). For each image, floor(n_present / 2) of its n_present classes are
    chosen uniformly at random (an image with a single class keeps nothing, as in ReCo).

    Vectorised: random scores per (image, class), absent classes pushed to the end, the rank of
    each score picks the chosen classes, and a gather maps the (B, C) choice back to pixels.
    """
    if labels.is_floating_point():
        raise ValueError(f"labels must be an integer tensor; got dtype {labels.dtype}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1; got {num_classes}")
    batch = labels.shape[0]
    flat = labels.reshape(batch, -1)
    valid = flat >= 0
    index = flat.clamp(min=0).long()
    counts = torch.zeros(batch, num_classes, device=labels.device, dtype=torch.float32)
    present = counts.scatter_add_(1, index, valid.float()) > 0  # (B, C)

    scores = uniform((batch, num_classes), labels, generator)
    scores = torch.where(present, scores, torch.full_like(scores, 2.0))  # absent classes last
    rank = scores.argsort(dim=1).argsort(dim=1)  # (B, C): position of each class in the order
    n_chosen = present.sum(dim=1, keepdim=True) // 2
    chosen = present & (rank < n_chosen)  # (B, C)
    keep = chosen.gather(1, index) & valid  # (B, N)
    return keep.reshape(labels.shape)


def _mix_with_next(
    keep: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    conf: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """x̃_i = keep ⊙ x_i + (1 − keep) ⊙ x_{(i+1) mod B}, for images, labels and conf."""

    def take(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.where(mask, x, torch.roll(x, shifts=-1, dims=0))

    mixed_conf = None if conf is None else take(conf, keep)
    return take(images, keep[:, None]), take(labels, keep), mixed_conf


def _check(images: torch.Tensor, labels: torch.Tensor, conf: torch.Tensor | None) -> None:
    spatial_ndim(images)
    check_maps(images, labels, "labels")
    check_maps(images, conf, "conf")


def cutmix(
    images: torch.Tensor,
    labels: torch.Tensor,
    conf: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """CutMix of each image with the next one: the box (about half the image) comes from x_{i+1}.

    images: (B, C, *S) float; labels: (B, *S) int; conf: (B, *S) float or None.
    Returns new tensors of the same shapes; the inputs are not modified.
    """
    _check(images, labels, conf)
    return _mix_with_next(random_box_mask(images, generator), images, labels, conf)


def classmix(
    images: torch.Tensor,
    labels: torch.Tensor,
    conf: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    *,
    num_classes: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """ClassMix: pixels of a random half of image i's classes stay, the rest come from x_{i+1}.

    Shapes as :func:`cutmix`; works for 2-D and 3-D alike. ``num_classes`` fixes the size of the
    per-(image, class) selection, so no ``torch.unique`` (a host sync) is needed.
    """
    _check(images, labels, conf)
    return _mix_with_next(class_mask(labels, num_classes, generator), images, labels, conf)


def cutout(
    images: torch.Tensor,
    labels: torch.Tensor,
    conf: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Cutout: zero the image inside a half-image box, mark its labels `IGNORE_LABEL`, conf 0."""
    _check(images, labels, conf)
    keep = random_box_mask(images, generator)
    out_images = torch.where(keep[:, None], images, torch.zeros_like(images))
    out_labels = torch.where(keep, labels, torch.full_like(labels, IGNORE_LABEL))
    out_conf = None if conf is None else torch.where(keep, conf, torch.zeros_like(conf))
    return out_images, out_labels, out_conf


def mix(
    kind: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    conf: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    *,
    num_classes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Apply the mixing named ``kind`` (one of ``MIX_KINDS``); ``none`` returns the inputs."""
    if kind == "cutmix":
        return cutmix(images, labels, conf, generator)
    if kind == "classmix":
        if num_classes is None:
            raise ValueError("mix kind 'classmix' needs num_classes (the number of label classes)")
        return classmix(images, labels, conf, generator, num_classes=num_classes)
    if kind == "cutout":
        return cutout(images, labels, conf, generator)
    if kind == "none":
        _check(images, labels, conf)
        return images, labels, conf
    raise ValueError(f"unknown mix kind {kind!r}; expected one of {', '.join(MIX_KINDS)}")
