"""Geometric augmentation (flag ``geo_aug``, method.md §4.2, §8.1): rot90 + flip, rotation, zoom.

The published 2-D code has these SSL4MIS transforms commented out; ACTION++ and the SSL4MIS
papers state them, so action-ray offers them on the device, per image, without a loop:

* the 8 rot90/flip combinations (the dihedral group of the square) are pixel permutations,
  precomputed once as flat index maps and applied to the batch with one ``gather``;
* a small rotation, optionally with an isotropic zoom (``scale_range``), is one
  ``affine_grid`` + ``grid_sample`` with per-image angles and scales (bilinear for images,
  nearest for labels and confidences), so a rotated and zoomed image is resampled once.
  A zoom shows a few labelled hearts at the sizes of the subjects nobody labelled (a small
  hypertrophic heart at end-systole next to a dilated one).

In 3-D both act in the axial (H, W) plane of every depth slice, as the LA pipeline's rot90/flip
does (§4.2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from action_ray.augment.common import (
    check_maps,
    field_dtype,
    select_per_sample,
    spatial_ndim,
    uniform,
)

Maps = tuple[torch.Tensor | None, torch.Tensor | None]


def _dihedral_index_maps(height: int, width: int, device: torch.device) -> torch.Tensor:
    """Flat source index of every output pixel for transform id t = k + 4·flip: (8, H·W).

    Transform t rotates by k·90° (``torch.rot90`` on dims (-2, -1)) and then, if flip, mirrors
    along W. Odd k exist only for square images; their rows are left as the identity otherwise
    and never drawn.
    """
    source = torch.arange(height * width, device=device).reshape(height, width)
    maps = []
    for t in range(8):
        k, flip = t % 4, t // 4
        if k % 2 == 1 and height != width:
            maps.append(source.reshape(-1))
            continue
        moved = torch.rot90(source, k, dims=(0, 1))
        maps.append((moved.flip(-1) if flip else moved).reshape(-1))
    return torch.stack(maps)


def _gather_plane(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Permute the last two axes of x (B, ..., H, W) with per-sample flat maps index (B, H·W)."""
    flat = x.flatten(-2)
    index = index.reshape(index.shape[0], *([1] * (flat.dim() - 2)), index.shape[1])
    return flat.gather(-1, index.expand_as(flat)).reshape(x.shape)


def rot_flip(
    images: torch.Tensor,
    ids: torch.Tensor,
    labels: torch.Tensor | None = None,
    conf: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Apply dihedral transform ``ids[i]`` (0..7, = k + 4·flip) to sample i, in the (H, W) plane.

    images: (B, C, *S); ids: (B,) int; labels, conf: (B, *S) or None. Exact (a permutation),
    so applying the inverse transforms (rotation k by (4 − k) mod 4, a mirror by itself) returns x
    bit for bit.
    """
    spatial_ndim(images)
    check_maps(images, labels, "labels")
    check_maps(images, conf, "conf")
    height, width = images.shape[-2:]
    index = _dihedral_index_maps(height, width, images.device)[ids.long()]  # (B, H·W)
    out_labels = None if labels is None else _gather_plane(labels, index)
    out_conf = None if conf is None else _gather_plane(conf, index)
    return _gather_plane(images, index), out_labels, out_conf


def random_rot_flip(
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    conf: torch.Tensor | None = None,
    p: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """With probability p per image, a uniformly random rot90 (k ∈ 0..3) + optional mirror.

    Non-square planes draw only k ∈ {0, 2} (an odd k would change the shape). SSL4MIS always
    mirrors after rotating, which reaches only the 4 mirror images; here all 8 elements are
    equally likely, which is the symmetry the augmentation is meant to teach.
    """
    spatial_ndim(images)
    draws = uniform((images.shape[0], 2), images, generator)  # apply, transform
    if images.shape[-1] == images.shape[-2]:
        ids = torch.floor(draws[:, 1] * 8).clamp(max=7).long()
    else:
        choice = torch.floor(draws[:, 1] * 4).clamp(max=3).long()  # k ∈ {0, 2} × flip
        ids = 2 * (choice % 2) + 4 * (choice // 2)
    ids = torch.where(draws[:, 0] < p, ids, torch.zeros_like(ids))
    return rot_flip(images, ids, labels, conf)


def rotate(
    images: torch.Tensor,
    angles: torch.Tensor,
    labels: torch.Tensor | None = None,
    conf: torch.Tensor | None = None,
    scales: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Rotate sample i by ``angles[i]`` radians about the centre of its (H, W) plane, and
    zoom it by ``scales[i]`` (> 1 magnifies: structures appear larger; None: no zoom).

    Positive angles turn the way ``torch.rot90(x, 1, dims=(-2, -1))`` does (counter-clockwise
    as displayed with row 0 on top); an angle of π/2 reproduces it on a square image.

    images: (B, C, *S) bilinear; labels: (B, *S) int nearest; conf: (B, *S) nearest; zero
    padding outside the field of view (label 0 = background, confidence 0 = ignored), as the
    SSL4MIS ``ndimage.rotate(..., cval=0)`` it replaces. The rotation is isotropic in pixels:
    the normalised-coordinate matrix is corrected for H != W.
    """
    ndim = spatial_ndim(images)
    check_maps(images, labels, "labels")
    check_maps(images, conf, "conf")
    height, width = images.shape[-2:]
    cos, sin = torch.cos(angles), torch.sin(angles)
    if scales is not None:  # output pixel p samples the input at R·p / s
        cos, sin = cos / scales, sin / scales
    zero = torch.zeros_like(cos)
    rows = [
        [cos, -sin * (height / width)] + [zero] * (ndim - 1),
        [sin * (width / height), cos] + [zero] * (ndim - 1),
    ]
    if ndim == 3:
        rows.append([zero, zero, torch.ones_like(cos), zero])
    theta = torch.stack([torch.stack(row, dim=-1) for row in rows], dim=1)  # (B, nd, nd + 1)
    grid = F.affine_grid(theta.to(field_dtype(images)), list(images.shape), align_corners=False)

    def sample(x: torch.Tensor, mode: str) -> torch.Tensor:
        out = F.grid_sample(x.to(grid.dtype), grid, mode=mode, padding_mode="zeros",
                            align_corners=False)
        return out.to(x.dtype)

    out_labels = out_conf = None
    if labels is not None:
        out_labels = sample(labels[:, None].to(grid.dtype), "nearest")[:, 0].round()
        out_labels = out_labels.to(labels.dtype)
    if conf is not None:
        out_conf = sample(conf[:, None], "nearest")[:, 0]
    return sample(images, "bilinear"), out_labels, out_conf


def random_rotation(
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    conf: torch.Tensor | None = None,
    max_degrees: float = 20.0,
    p: float = 0.5,
    generator: torch.Generator | None = None,
    scale_range: tuple[float, float] = (1.0, 1.0),
    scale_p: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """With probability p per image, rotate by an angle ~ U[−max_degrees, max_degrees]; with
    probability ``scale_p`` (independently), zoom by a factor log-uniform in ``scale_range``.

    With ``scale_range=(1, 1)`` no zoom numbers are drawn, so the random stream (and every
    result) is the same as without the zoom option.
    """
    spatial_ndim(images)
    if max_degrees < 0:
        raise ValueError(f"max_degrees must be >= 0; got {max_degrees}")
    low, high = scale_range
    if not 0 < low <= high:
        raise ValueError(f"scale_range must be 0 < low <= high; got {scale_range}")
    draws = uniform((images.shape[0], 2), images, generator)  # apply, angle
    angles = math.radians(max_degrees) * (2 * draws[:, 1] - 1)
    apply = draws[:, 0] < p
    scales = None
    if (low, high) != (1.0, 1.0):
        zoom = uniform((images.shape[0], 2), images, generator)  # apply, log-scale
        zoomed = zoom[:, 0] < scale_p
        log_scale = math.log(low) + (math.log(high) - math.log(low)) * zoom[:, 1]
        scales = torch.where(zoomed, torch.exp(log_scale), torch.ones_like(log_scale))
        angles = torch.where(apply, angles, torch.zeros_like(angles))
        apply = apply | zoomed
    rotated = rotate(images, angles, labels, conf, scales)
    return (
        select_per_sample(apply, rotated[0], images),
        select_per_sample(apply, rotated[1], labels),
        select_per_sample(apply, rotated[2], conf),
    )
