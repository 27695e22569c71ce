"""Projection, predictor and representation heads of ACTION (method.md §2.2), and the
local-patch extraction that feeds the local heads (§3.3).

Every head is purely linear (no BN, no nonlinearity between layers), as in the published code:
the distillation losses compare *similarity distributions*, and the heads only have to map the
backbone into the comparison space.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _check_dims(dims: int) -> None:
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims!r}")


class GlobalProjection(nn.Module):
    """q-global / k-global head: pool the latent map, flatten, Linear -> Linear.

    latent: (B, in_channels, *S) -> (B, out_dim). ``pool`` is the side of the adaptive average
    pool before flattening (1 = global average pooling, the published setting).
    """

    def __init__(self, in_channels: int, hidden: int = 256, out_dim: int = 512, pool: int = 1, dims: int = 2) -> None:
        super().__init__()
        _check_dims(dims)
        self.pool = (nn.AdaptiveAvgPool2d if dims == 2 else nn.AdaptiveAvgPool3d)(pool)
        self.fc1 = nn.Linear(in_channels * pool**dims, hidden)
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(torch.flatten(self.pool(latent), 1)))


class GlobalPredictor(nn.Module):
    """Student-only predictor on top of q-global: (B, dim) -> (B, dim), Linear -> Linear."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(z))


class LocalProjection(nn.Module):
    """q-local / k-local head on one logit patch: adaptive-pool to ``pool``^dims, 1x1 C->2C->C.

    patches: (N, C, *cut) -> (N, C, *pool). An input already of size ``pool`` passes the pool
    unchanged, so the head also accepts the output of `pooled_local_patches`.
    """

    def __init__(self, num_classes: int, pool: int = 8, dims: int = 2) -> None:
        super().__init__()
        _check_dims(dims)
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.pool = (nn.AdaptiveAvgPool2d if dims == 2 else nn.AdaptiveAvgPool3d)(pool)
        self.conv1 = conv(num_classes, 2 * num_classes, kernel_size=1)
        self.conv2 = conv(2 * num_classes, num_classes, kernel_size=1)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(self.pool(patches)))


class LocalPredictor(nn.Module):
    """Student-only local predictor: (N, C, *P) -> (N, C, *P), 1x1 conv C->C twice."""

    def __init__(self, num_classes: int, dims: int = 2) -> None:
        super().__init__()
        _check_dims(dims)
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.conv1 = conv(num_classes, num_classes, kernel_size=1)
        self.conv2 = conv(num_classes, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class RepresentationHead(nn.Module):
    """Pixel representation head for anatomical contrast (FT).

    features [e4, d1, ...] (each (B, c_i, *S_i)) -> upsample each to ``size`` (bi/trilinear,
    align_corners=True) -> concat (B, sum c_i, *size) -> conv3 (no bias) -> conv1
    -> (B, dim, *size).
    """

    def __init__(self, in_channels: int, dim: int = 512, dims: int = 2) -> None:
        super().__init__()
        _check_dims(dims)
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.mode = "bilinear" if dims == 2 else "trilinear"
        self.conv1 = conv(in_channels, dim, kernel_size=3, padding=1, bias=False)
        self.conv2 = conv(dim, dim, kernel_size=1)

    def forward(self, features: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        size = tuple(int(s) for s in size)
        ups = [
            f if tuple(f.shape[2:]) == size else F.interpolate(f, size=size, mode=self.mode, align_corners=True)
            for f in features
        ]
        return self.conv2(self.conv1(torch.cat(ups, dim=1)))


def patch_starts(size: int, cut: int, stride: int, include_last: bool = False) -> range:
    """Start offsets of the local windows along one axis of length ``size``.

    Published 2-D rule (``include_last=False``): ``range(0, size - cut, stride)``, i.e. the start
    ``size - cut`` itself is never used; 256 / cut 64 / stride 32 gives 0, 32, ..., 160 (6 starts,
    36 patches, rows 224-255 uncovered) and 64 / 16 / 8 gives 0, ..., 40 (again 36 patches).
    Published 3-D rule (``include_last=True``): every window that fits,
    ``range(0, size - cut + 1, stride)``; 112 / 20 / 10 gives 0..90 (10) and 80 / 20 / 10 gives
    0..60 (7), the 10x10x7 = 700 cubes of §3.3.
    """
    if cut < 1 or stride < 1:
        raise ValueError(f"cut and stride must be positive, got cut={cut}, stride={stride}")
    starts = range(0, size - cut + (1 if include_last else 0), stride)
    if len(starts) == 0:
        raise ValueError(
            f"no local window of size {cut} (stride {stride}) fits an axis of {size} "
            f"(include_last={include_last}); use a smaller cut or a larger input"
        )
    return starts


def _window_view(x: torch.Tensor, cut: int, stride: int, include_last: bool) -> torch.Tensor:
    """x (B, C, *S) -> (n_1, ..., n_d, B, C, cut, ..., cut) with the windows in row-major order."""
    dims = x.dim() - 2
    for axis in range(2, 2 + dims):
        n = len(patch_starts(x.shape[axis], cut, stride, include_last))
        x = x.narrow(axis, 0, (n - 1) * stride + cut).unfold(axis, cut, stride)
    # x: (B, C, n_1..n_d, cut_1..cut_d) -> windows first, row-major over (n_1, ..., n_d)
    order = [*range(2, 2 + dims), 0, 1, *range(2 + dims, 2 + 2 * dims)]
    return x.permute(order)


def extract_local_patches(
    logits: torch.Tensor, cut: int = 64, stride: int = 32, include_last: bool | None = None
) -> torch.Tensor:
    """Cut the local windows of §3.3 out of a logit map, without a Python loop.

    logits: (B, C, H, W) or (B, C, D, H, W) -> (P, B, C, cut, cut[, cut]), patch-major, the
    patches ordered row-major by their start corner. The start rule is `patch_starts`;
    ``include_last=None`` picks the published one for the dimensionality (2-D: last start
    excluded; 3-D: included).
    """
    if logits.dim() not in (4, 5):
        raise ValueError(f"expected logits (B, C, H, W) or (B, C, D, H, W), got shape {tuple(logits.shape)}")
    if include_last is None:
        include_last = logits.dim() == 5
    windows = _window_view(logits, cut, stride, include_last)
    dims = logits.dim() - 2
    return windows.reshape(-1, *logits.shape[:2], *([cut] * dims))


def pooled_local_patches(
    logits: torch.Tensor, cut: int = 64, stride: int = 32, pool: int = 8, include_last: bool | None = None
) -> torch.Tensor:
    """`extract_local_patches` followed by an average pool of every patch to ``pool`` per axis,
    computed by pooling the map once and windowing the pooled map.

    logits: (B, C, *S) -> (P, B, C, pool, ..., pool). Equal (up to float rounding) to
    ``adaptive_avg_pool(extract_local_patches(logits, cut, stride))`` when ``cut`` is a multiple
    of ``pool`` and ``stride`` a multiple of ``cut // pool`` (the published 64/32/8 and 20/10/4
    are); it avoids materialising the overlapping full-resolution windows (4x the map in 2-D).
    """
    if cut % pool or stride % (cut // pool):
        raise ValueError(
            f"pooled_local_patches needs cut % pool == 0 and stride % (cut // pool) == 0, got "
            f"cut={cut}, stride={stride}, pool={pool}; use extract_local_patches instead"
        )
    if logits.dim() not in (4, 5):
        raise ValueError(f"expected logits (B, C, H, W) or (B, C, D, H, W), got shape {tuple(logits.shape)}")
    if include_last is None:
        include_last = logits.dim() == 5
    dims = logits.dim() - 2
    cell = cut // pool
    counts = [len(patch_starts(s, cut, stride, include_last)) for s in logits.shape[2:]]
    covered = [(n - 1) * stride + cut for n in counts]
    for axis, length in enumerate(covered):
        logits = logits.narrow(axis + 2, 0, length)
    pooled = (F.avg_pool2d if dims == 2 else F.avg_pool3d)(logits, cell)
    windows = _window_view(pooled, pool, stride // cell, include_last=True)
    return windows.reshape(-1, *logits.shape[:2], *([pool] * dims))


def embed_local_patches(patches: torch.Tensor, *heads: nn.Module) -> torch.Tensor:
    """Run patch-major local patches through local heads and flatten each patch embedding.

    patches: (P, B, C, *cut) -> (P, B, D_l) with D_l = C * pool^dims in (channel, row, col)
    order, e.g. ``embed_local_patches(p, local_q, local_predictor)`` for the student.
    """
    n_patches, batch = patches.shape[:2]
    x = patches.reshape(n_patches * batch, *patches.shape[2:])
    for head in heads:
        x = head(x)
    return x.reshape(n_patches, batch, -1)
