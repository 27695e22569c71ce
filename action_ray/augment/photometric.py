"""Photometric augmentation on float batches: brightness/contrast jitter and Gaussian blur.

The published code quantises each image to 8 bits and runs PIL per image on the CPU; here the
same operations run on the whole float batch on its own device (method.md §8.1), with per-image
random parameters drawn in one call. The pre-training views of §3.1 are built from the same
pieces in :func:`pretrain_views`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from action_ray.augment.common import Range, check_range, per_sample, spatial_ndim, uniform


def _scale(draw: torch.Tensor, bounds: Range) -> torch.Tensor:
    """Map U[0,1) draws to U[low, high)."""
    return bounds[0] + draw * (bounds[1] - bounds[0])


def _clamp(images: torch.Tensor, clamp: Range | None) -> torch.Tensor:
    return images if clamp is None else images.clamp(clamp[0], clamp[1])


def adjust_brightness_contrast(
    images: torch.Tensor,
    brightness: torch.Tensor,
    contrast: torch.Tensor,
    contrast_first: torch.Tensor,
    clamp: Range | None = (0.0, 1.0),
) -> torch.Tensor:
    """Deterministic brightness and contrast change with per-image factors and order.

    images: (B, C, *S) float; brightness, contrast: (B,) factors; contrast_first: (B,) bool.
    brightness: x -> b·x. contrast: x -> c·x + (1 − c)·mean(x), the mean taken per image over
    all its pixels (torchvision's grayscale rule). Each op is followed by the clamp, which is
    why the order matters; both orders are computed and selected per image with ``torch.where``
    (the batch is small next to a network forward, and a branch would need a host sync).
    """
    ndim = images.dim()
    b = per_sample(brightness.to(images.dtype), ndim)
    c = per_sample(contrast.to(images.dtype), ndim)
    reduce_dims = tuple(range(1, ndim))

    def bright(x: torch.Tensor) -> torch.Tensor:
        return _clamp(x * b, clamp)

    def contr(x: torch.Tensor) -> torch.Tensor:
        return _clamp(c * x + (1 - c) * x.mean(dim=reduce_dims, keepdim=True), clamp)

    first = per_sample(contrast_first, ndim)
    return torch.where(first, bright(contr(images)), contr(bright(images)))


def brightness_contrast(
    images: torch.Tensor,
    p: float = 0.5,
    brightness: Range = (0.75, 1.25),
    contrast: Range = (0.75, 1.25),
    clamp: Range | None = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-image colour jitter: with probability p, brightness and contrast in random order.

    images: (B, C, *S) float in any range; returns a new tensor of the same shape. Use
    ``clamp=None`` for z-scored volumes (method.md §4.2: clamping MRI z-scores to [0, 1] is
    the 3-D bug to avoid).
    """
    spatial_ndim(images)
    check_range("brightness", brightness)
    check_range("contrast", contrast)
    draws = uniform((images.shape[0], 4), images, generator)  # apply, b, c, order
    jittered = adjust_brightness_contrast(
        images, _scale(draws[:, 1], brightness), _scale(draws[:, 2], contrast),
        draws[:, 3] < 0.5, clamp,
    )
    return torch.where(per_sample(draws[:, 0] < p, images.dim()), jittered, images)


def gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Normalised 1-D Gaussian kernels, one per sigma: (N,) -> (N, 2·radius + 1)."""
    offsets = torch.arange(-radius, radius + 1, device=sigma.device, dtype=sigma.dtype)
    weights = torch.exp(-0.5 * (offsets[None, :] / sigma[:, None]) ** 2)
    return weights / weights.sum(dim=1, keepdim=True)


def blur_with_sigma(images: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Gaussian blur with a different sigma for each image, all images in one grouped conv.

    images: (B, C, *S) float, S = (H, W) or (D, H, W); sigma: (B,) > 0, in pixels;
    radius: kernel half-width (taps = 2·radius + 1). Edges replicate the border pixel (as
    scipy's ``mode='nearest'``). The batch (and channel) axis is folded into conv channels and
    each channel gets its own kernel via ``groups``, one separable pass per spatial axis.
    """
    ndim = spatial_ndim(images)
    if radius < 0:
        raise ValueError(f"radius must be >= 0; got {radius}")
    batch, channels = images.shape[:2]
    spatial = images.shape[2:]
    kernels = gaussian_kernels(sigma.to(images.dtype), radius)  # (B, K)
    kernels = kernels.repeat_interleave(channels, dim=0)  # (B·C, K)
    conv = F.conv2d if ndim == 2 else F.conv3d
    out = images.reshape(1, batch * channels, *spatial)
    for axis in range(ndim):
        shape = [batch * channels, 1] + [1] * ndim
        shape[2 + axis] = 2 * radius + 1
        pad = [0] * (2 * ndim)
        pad[2 * (ndim - 1 - axis)] = radius
        pad[2 * (ndim - 1 - axis) + 1] = radius
        out = conv(F.pad(out, pad, mode="replicate"), kernels.reshape(shape),
                   groups=batch * channels)
    return out.reshape(images.shape)


def default_radius(sigma: Range) -> int:
    """Kernel half-width for a sigma range: 4 standard deviations of the largest sigma."""
    return max(1, math.ceil(4.0 * sigma[1]))


def gaussian_blur(
    images: torch.Tensor,
    p: float = 0.5,
    sigma: Range = (0.15, 1.15),
    generator: torch.Generator | None = None,
    radius: int | None = None,
) -> torch.Tensor:
    """Per-image Gaussian blur: with probability p, sigma ~ U[sigma] (pixels), per image.

    images: (B, C, *S) float; returns a new tensor. Works for 2-D and 3-D batches (a 3-D blur
    over all three axes, as §4.2 recommends for volumes).
    """
    spatial_ndim(images)
    check_range("sigma", sigma, positive=True)
    draws = uniform((images.shape[0], 2), images, generator)  # apply, sigma
    radius = default_radius(sigma) if radius is None else radius
    blurred = blur_with_sigma(images, _scale(draws[:, 1], sigma), radius)
    return torch.where(per_sample(draws[:, 0] < p, images.dim()), blurred, images)


def pretrain_views(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    p_jitter: float = 0.5,
    jitter: Range = (0.8, 1.2),
    p_blur: float = 0.5,
    sigma: Range = (0.15, 1.15),
    clamp: Range | None = (0.0, 1.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher views for pre-training, method.md §3.1 with ``combinations = 2``.

    x: (B, C, *S) float. Returns (student_view, teacher_view), two new tensors that share no
    storage with each other or with ``x``:
      * w.p. p_jitter (once per batch) both views get the same per-image brightness/contrast
        jitter (factors ~ U[jitter], random order per image);
      * w.p. p_blur (once per batch) the teacher view alone is blurred with one sigma ~ U[sigma]
        for the whole batch.
    The batch-level coin flips are tensors used in ``torch.where``, so no host sync is needed;
    the price is computing the jitter and blur even when they are not used.
    For z-scored 3-D volumes pass ``clamp=None`` and a mild ``jitter`` such as (0.98, 1.02)
    (§4.2).
    """
    spatial_ndim(x, "x")
    check_range("jitter", jitter)
    check_range("sigma", sigma, positive=True)
    batch = x.shape[0]
    draws = uniform((batch + 1, 3), x, generator)
    jitter_on, blur_on, batch_sigma = draws[0, 0] < p_jitter, draws[0, 1] < p_blur, draws[0, 2]
    per_image = draws[1:]  # (B, 3): brightness, contrast, order
    jittered = adjust_brightness_contrast(
        x, _scale(per_image[:, 0], jitter), _scale(per_image[:, 1], jitter),
        per_image[:, 2] < 0.5, clamp,
    )
    student = torch.where(jitter_on, jittered, x)
    sigmas = _scale(batch_sigma, sigma).expand(batch)
    blurred = blur_with_sigma(student, sigmas, default_radius(sigma))
    teacher = torch.where(blur_on, blurred, student)
    return student, teacher
