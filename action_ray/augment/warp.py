"""Random smooth (diffeomorphic) deformation of a batch, method.md §4.2 with the §8.1 fix.

A random velocity field on a coarse control grid is normalised, smoothed, upsampled and
integrated by scaling and squaring into a displacement, which then warps the images
(bilinear) and, unlike the published code (§8.1), the pseudo-labels and confidences too
(nearest), so the targets stay aligned with what the student sees.

Fields are kept channel-first, (B, nd, *S), with channel k being grid_sample's k-th coordinate:
x (along W), y (along H) and, in 3-D, z (along D), all in normalised [-1, 1] units with
``align_corners=True``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from action_ray.augment.common import (
    check_maps,
    field_dtype,
    per_sample,
    select_per_sample,
    spatial_ndim,
    uniform,
)
from action_ray.augment.photometric import blur_with_sigma

_SMOOTH_SIGMA = 1.0  # σ of both Gaussian smoothings, in grid cells / pixels (§4.2)
_SMOOTH_RADIUS = 4


def identity_grid(spatial: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """Normalised coordinates of every pixel: (nd, *S), channel 0 = x (W axis), align_corners."""
    axes = [torch.linspace(-1.0, 1.0, n, device=like.device, dtype=like.dtype) for n in spatial]
    mesh = torch.meshgrid(*axes, indexing="ij")  # (D,) H, W order
    return torch.stack(mesh[::-1], dim=0)


def _sample(field: torch.Tensor, coords: torch.Tensor, mode: str) -> torch.Tensor:
    """grid_sample ``field`` (B, C, *S) at ``coords`` (B, nd, *S) with border padding."""
    return F.grid_sample(field, coords.movedim(1, -1), mode=mode, padding_mode="border",
                         align_corners=True)


def _smooth(field: torch.Tensor) -> torch.Tensor:
    sigma = torch.full((field.shape[0],), _SMOOTH_SIGMA, device=field.device, dtype=field.dtype)
    return blur_with_sigma(field, sigma, _SMOOTH_RADIUS)


def integrate_velocity(velocity: torch.Tensor, steps: int = 8) -> torch.Tensor:
    """Scaling and squaring: exp(v) as a displacement, (B, nd, *S) -> (B, nd, *S).

    u = v / 2^steps, then ``steps`` times u <- u + u∘(id + u). For a smooth field the result is
    a diffeomorphism's displacement; a zero field gives exactly zero.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0; got {steps}")
    identity = identity_grid(tuple(velocity.shape[2:]), velocity)
    disp = velocity / (2**steps)
    for _ in range(steps):
        disp = disp + _sample(disp, identity + disp, "bilinear")
    return disp


def random_displacement(
    images: torch.Tensor,
    epsilon: float = 1.5,
    grid: int = 32,
    steps: int = 8,
    generator: torch.Generator | None = None,
    draws: torch.Tensor | None = None,
) -> torch.Tensor:
    """Random smooth displacement for each image: (B, C, *S) -> (B, nd, *S), normalised units.

    velocity ~ U[-1, 1] on a grid^nd control grid, unit L2 norm per sample, × epsilon,
    smoothed (σ = 1 cell), upsampled (bi/trilinear) to S, integrated (``steps`` squarings),
    smoothed again (σ = 1 pixel). ``draws`` ((B, nd·grid^nd) U[0,1) numbers) lets a caller
    that already drew its random numbers in one call pass them in.

    Scale: the unit norm is spread over nd·grid^nd numbers, so the motion ε buys depends on
    grid and nd. Measured at grid 32 in 2-D, ε = 1.5 moves the pixels of a 256² image by about
    0.9 px on average and up to about 5 px ("a few pixels", §4.2). In 3-D the same ε gives
    much less motion; raise ε if you warp volumes (the published 3-D recipe does not warp).
    """
    ndim = spatial_ndim(images)
    if grid < 2:
        raise ValueError(f"grid must be >= 2 control points per axis; got {grid}")
    batch = images.shape[0]
    shape = (batch, ndim, *([grid] * ndim))
    if draws is None:
        draws = uniform((batch, ndim * grid**ndim), images, generator)
    dtype = field_dtype(images)
    velocity = (draws.reshape(shape) * 2 - 1).to(dtype)
    norm = velocity.flatten(1).norm(dim=1).clamp_min(torch.finfo(dtype).tiny)
    velocity = _smooth(velocity * per_sample(epsilon / norm, velocity.dim()))
    velocity = F.interpolate(velocity, size=tuple(images.shape[2:]),
                             mode="bilinear" if ndim == 2 else "trilinear", align_corners=True)
    return _smooth(integrate_velocity(velocity, steps))


def warp_with_displacement(
    displacement: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    conf: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Warp images (bilinear) and labels / conf (nearest) with one displacement field.

    displacement: (B, nd, *S); images: (B, C, *S); labels: (B, *S) int; conf: (B, *S) float.
    Sampling positions are clamped to [-1, 1]; padding repeats the border.
    """
    spatial_ndim(images)
    check_maps(images, labels, "labels")
    check_maps(images, conf, "conf")
    coords = (identity_grid(tuple(images.shape[2:]), displacement) + displacement).clamp(-1, 1)
    coords = coords.to(field_dtype(images))
    out_images = _sample(images.to(coords.dtype), coords, "bilinear").to(images.dtype)
    out_labels = out_conf = None
    if labels is not None:
        picked = _sample(labels[:, None].to(coords.dtype), coords, "nearest")[:, 0]
        out_labels = picked.round().to(labels.dtype)
    if conf is not None:
        out_conf = _sample(conf[:, None].to(coords.dtype), coords, "nearest")[:, 0].to(conf.dtype)
    return out_images, out_labels, out_conf


def random_smooth_warp(
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    conf: torch.Tensor | None = None,
    p: float = 0.5,
    epsilon: float = 1.5,
    grid: int = 32,
    steps: int = 8,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """With probability p per image, warp it by a random smooth deformation (2-D or 3-D).

    images: (B, C, *S) float; labels: (B, *S) int or None; conf: (B, *S) float or None.
    Returns (images, labels, conf), new tensors (None stays None). Labels and confidences use
    the image's own field with nearest sampling, so label values stay in the input label set.
    The published code flips one coin per batch; here each image flips its own (same marginal
    probability, no host sync).
    """
    ndim = spatial_ndim(images)
    batch = images.shape[0]
    draws = uniform((batch, 1 + ndim * grid**ndim), images, generator)
    displacement = random_displacement(images, epsilon, grid, steps, draws=draws[:, 1:])
    warped = warp_with_displacement(displacement, images, labels, conf)
    apply = draws[:, 0] < p  # (B,)
    return (
        select_per_sample(apply, warped[0], images),
        select_per_sample(apply, warped[1], labels),
        select_per_sample(apply, warped[2], conf),
    )
