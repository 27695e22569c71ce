"""Small tensor helpers shared by the loss modules (numerics and shape checks).

Everything here is host-sync free: shape checks read only ``tensor.shape`` (Python ints known
before any kernel runs), never tensor values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype a loss should compute in: the input's, but at least float32.

    Softmaxes at temperature 0.01 and sums over 10^6 pixels lose too much in half precision,
    so fp16/bf16 inputs (autocast) are promoted; float64 stays float64 for reference tests.
    """
    return torch.float32 if tensor.dtype in _LOW_PRECISION else tensor.dtype


def unit_vectors(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """L2-normalise ``x`` along ``dim`` without overflow for huge norms.

    ``F.normalize`` squares the entries, so a float32 vector with entries around 1e20 already
    has an infinite norm and comes out as zeros with zero gradient. Dividing first by the
    (detached) largest absolute entry keeps the squares in range; because normalisation is
    scale invariant, the value *and* the gradient are exactly those of ``x / ||x||``.
    All-zero vectors stay zero (as with ``F.normalize``).
    """
    largest = x.detach().abs().amax(dim=dim, keepdim=True)
    scale = torch.where(largest > 0, largest, torch.ones_like(largest))
    return F.normalize(x / scale, dim=dim)


def check_rank_at_least(name: str, tensor: torch.Tensor, rank: int, layout: str) -> None:
    """Raise ``ValueError`` when ``tensor`` has fewer than ``rank`` dimensions."""
    if tensor.dim() < rank:
        raise ValueError(
            f"{name} must have shape {layout} (at least {rank} dimensions), "
            f"got shape {tuple(tensor.shape)}"
        )


def check_same_shape(name_a: str, a: torch.Size, name_b: str, b: torch.Size) -> None:
    """Raise ``ValueError`` naming both tensors when two shapes differ."""
    if tuple(a) != tuple(b):
        raise ValueError(
            f"{name_a} has shape {tuple(a)} but {name_b} has shape {tuple(b)}; they must match"
        )


def check_positive(name: str, value: float) -> None:
    """Raise ``ValueError`` for a non-positive hyper-parameter (temperature, count, ...)."""
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
