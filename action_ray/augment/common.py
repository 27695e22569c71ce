"""Shared plumbing for the augmentation ops: shape checks and on-device random draws.

Every op in :mod:`action_ray.augment` draws its random parameters with :func:`uniform` so that
the draw happens on the images' device, in one call for the whole batch, from the caller's
``torch.Generator`` when one is given. Nothing here reads a tensor value back to the host.
"""

from __future__ import annotations

import torch

Range = tuple[float, float]  # (low, high) of a uniform draw


def check_range(name: str, bounds: Range, positive: bool = False) -> None:
    """Check a (low, high) parameter range; ``positive`` also requires low > 0 (e.g. sigma)."""
    ok = len(bounds) == 2 and 0.0 <= bounds[0] <= bounds[1] and (bounds[0] > 0 or not positive)
    if not ok:
        floor = "0 <" if positive else "0 <="
        raise ValueError(f"{name} must be a (low, high) pair with {floor} low <= high; "
                         f"got {bounds!r}")


def spatial_ndim(images: torch.Tensor, name: str = "images") -> int:
    """Return 2 or 3 for an image batch shaped (B, C, H, W) or (B, C, D, H, W).

    Raises ValueError naming the argument when the batch has any other rank, so a caller who
    forgot the channel axis learns it here rather than from a shape error deep inside a conv.
    """
    if images.dim() not in (4, 5):
        raise ValueError(
            f"{name} must be (B, C, H, W) or (B, C, D, H, W); got shape {tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise ValueError(f"{name} must be a float tensor; got dtype {images.dtype}")
    return images.dim() - 2


def check_maps(images: torch.Tensor, maps: torch.Tensor | None, name: str) -> None:
    """Check that a per-pixel map (labels or confidences) is shaped (B, *S) like ``images``."""
    if maps is None:
        return
    expected = (images.shape[0], *images.shape[2:])
    if tuple(maps.shape) != expected:
        raise ValueError(
            f"{name} must be shaped (B, *S) = {expected} to match images {tuple(images.shape)}; "
            f"got {tuple(maps.shape)}"
        )


def uniform(
    shape: tuple[int, ...],
    like: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """U[0, 1) samples of ``shape`` on ``like``'s device (float32), drawn in one call.

    The generator must live on the same device type as the data: torch refuses to draw CUDA
    numbers from a CPU generator, and silently drawing on the CPU and copying would be a host
    round trip per step, which is exactly what the batched ops are here to avoid.
    """
    if generator is not None and generator.device.type != like.device.type:
        raise ValueError(
            f"generator is on {generator.device} but the batch is on {like.device}; "
            f"create it with torch.Generator(device={str(like.device)!r})"
        )
    return torch.rand(shape, generator=generator, device=like.device, dtype=torch.float32)


def field_dtype(images: torch.Tensor) -> torch.dtype:
    """Dtype for sampling grids: at least float32, so half-precision batches are still warped
    to sub-pixel accuracy (a bf16 coordinate is off by up to ~0.5 pixel at 256 pixels)."""
    return torch.promote_types(images.dtype, torch.float32)


def per_sample(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape a (B,) vector to (B, 1, ..., 1) so it broadcasts against a (B, ...) tensor."""
    return values.reshape(values.shape[0], *([1] * (ndim - 1)))


def select_per_sample(
    apply: torch.Tensor, new: torch.Tensor | None, old: torch.Tensor | None
) -> torch.Tensor | None:
    """Per sample, ``new`` where ``apply`` (B,) is True, else ``old``; None stays None.

    This is how every "with probability p" op stays branch-free: the op runs on the whole
    batch and the coin flips pick, so there is no host sync and no data-dependent shape.
    """
    if old is None:
        return None
    return torch.where(per_sample(apply, old.dim()), new, old)
