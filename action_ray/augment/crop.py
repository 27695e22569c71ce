"""Random training crops of 2-D slices, centred on foreground with a set probability.

Why crops: the cardiac structures cover about 1 % of a slice each. Shrinking a 128² phantom
slice to 64² to make a step cheap leaves the myocardium 1–2 px thick and caps what any method
can reach; cutting a 64² window out of the native slice costs the same per step and keeps the
anatomy at full resolution. Why foreground-centred: with a window a quarter of the slice, a
uniform crop misses the heart in a large share of labelled draws, and labelled pixels are the
scarcest thing a few-label run has. nnU-Net forces a third of its patches onto foreground for
the same reason. Evaluation then runs on whole slices (the UNet is fully convolutional).

Unlabelled images (no labels, or rows without foreground) get uniform crops. Everything is
drawn on the tensors' device from the caller's generator, per image, without a host sync.
"""

from __future__ import annotations

import torch

from action_ray.losses.sampling import uniform_below, uniform_from_masks


def crop_origins(
    labels: torch.Tensor | None,
    batch: int,
    height: int,
    width: int,
    size: int,
    foreground_p: float,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left corners (y0, x0), each (B,) long, of one ``size``² window per image.

    With probability ``foreground_p`` (and only where the image has a label > 0) the window is
    centred on a foreground pixel drawn uniformly, then shifted to lie inside the slice;
    otherwise the corner is uniform over all valid corners.
    """
    device = labels.device if labels is not None else device
    span_y = torch.full((batch,), height - size + 1, device=device)
    span_x = torch.full((batch,), width - size + 1, device=device)
    y0, x0 = uniform_below(span_y, generator), uniform_below(span_x, generator)
    if labels is None or foreground_p <= 0:
        return y0, x0
    flat = labels.reshape(batch, -1)
    foreground = flat > 0  # IGNORE_LABEL (negative) is not foreground
    pixel = uniform_from_masks(foreground, torch.arange(batch, device=device), generator)
    use = foreground.any(dim=1)
    use &= torch.rand(batch, generator=generator, device=device) < foreground_p
    half = size // 2
    fy = (pixel // width - half).clamp(0, height - size)
    fx = (pixel % width - half).clamp(0, width - size)
    return torch.where(use, fy, y0), torch.where(use, fx, x0)


def take_windows(tensor: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, size: int) -> torch.Tensor:
    """The ``size``² window at (y0[b], x0[b]) of every image: (B, *C, H, W) -> (B, *C, size, size)."""
    offsets = torch.arange(size, device=tensor.device)
    rows = (y0[:, None] + offsets)[:, :, None]  # (B, s, 1)
    cols = (x0[:, None] + offsets)[:, None, :]  # (B, 1, s)
    index = torch.arange(tensor.shape[0], device=tensor.device)[:, None, None]
    if tensor.dim() == 3:
        return tensor[index, rows, cols]
    # (B, C, H, W): advanced indices split by a slice go first -> (B, s, s, C)
    return tensor[index, :, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_crops(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    size: int,
    foreground_p: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Crop images (B, C, H, W) and labels (B, H, W) to ``size``² windows (see module doc).

    Returns the inputs unchanged when the slices already are ``size``² or smaller.
    """
    batch, _, height, width = images.shape
    if height <= size and width <= size:
        return images, labels
    if height < size or width < size:
        raise ValueError(f"crop size {size} is larger than the slice side {min(height, width)}")
    y0, x0 = crop_origins(labels, batch, height, width, size, foreground_p, generator, images.device)
    cropped = take_windows(images, y0, x0, size)
    return cropped, (take_windows(labels, y0, x0, size) if labels is not None else None)
