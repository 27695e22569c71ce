"""Batched, host-sync-free random draws used by the anatomical contrast.

The published anatomical contrast samples with Python loops, ``.cpu()`` round trips and NumPy;
these helpers draw every class's samples at once on the tensors' device (inverse-CDF lookup
for categorical draws, a compacted member list for uniform draws over masks). Uniform draws are made in float64 so that masks with millions
of pixels are sampled uniformly (a float32 uniform has only 24 bits), and nothing here has the
2^24-category limit of ``torch.multinomial`` on CUDA.
"""

from __future__ import annotations

import torch


def _uniform01(shape: torch.Size | tuple[int, ...], device: torch.device,
               generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, dtype=torch.float64, device=device, generator=generator)


def uniform_below(bounds: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One integer uniform in [0, bounds[i]) per element; 0 where bounds[i] <= 0.

    Args:
        bounds: (...) integer upper bounds (exclusive).
    Returns:
        (...) long tensor, same shape and device.
    """
    draws = (_uniform01(bounds.shape, bounds.device, generator) * bounds).floor().long()
    # rand < 1, but rand * bound can round up to bound itself; keep every draw in range.
    return torch.minimum(draws, bounds.long() - 1).clamp(min=0)


def uniform_from_masks(
    masks: torch.Tensor, rows: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """For each entry r of ``rows``, a column drawn uniformly from the True columns of masks[r].

    Draws are independent and with replacement. The True columns of all rows are first
    compacted, row after row, into one list (a scatter to their running-count positions,
    O(R·X)); a draw is then one gather at (True columns before row r) + u, u uniform in
    [0, count_r). Rows without any True column give an arbitrary in-range column: callers must
    discard those draws (they know which rows are empty).

    Args:
        masks: (R, X) bool.
        rows: (...) long row indices into ``masks``.
    Returns:
        (...) long column indices in [0, X).
    """
    num_rows, num_columns = masks.shape
    flat_mask = masks.reshape(-1)
    counts = masks.sum(dim=1)  # (R,)
    before_row = counts.cumsum(dim=0) - counts  # (R,)
    slots = flat_mask.cumsum(dim=0) - 1  # compact position of every True entry
    spare = num_rows * num_columns  # one extra slot absorbs all False entries
    columns = torch.arange(spare, device=masks.device) % num_columns
    compact = torch.zeros(spare + 1, dtype=torch.long, device=masks.device)
    compact.scatter_(0, torch.where(flat_mask, slots, spare), columns)
    offsets = uniform_below(counts[rows], generator)
    return compact[(before_row[rows] + offsets).clamp(max=spare - 1)]


def categorical(
    probs: torch.Tensor, num_samples: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``num_samples`` i.i.d. draws from each row of a (possibly unnormalised) probability matrix.

    A category with probability 0 is never drawn. Rows that are all zero are treated as
    uniform (their draws are meaningless; callers mask them out).

    Args:
        probs: (R, K) non-negative weights.
    Returns:
        (R, num_samples) long category indices.
    """
    num_categories = probs.shape[1]
    weights = probs.detach().to(torch.float64)
    weights = torch.where((weights > 0).any(dim=1, keepdim=True), weights,
                          torch.ones_like(weights))
    cdf = weights.cumsum(dim=1)  # (R, K)
    targets = _uniform01((probs.shape[0], num_samples), probs.device, generator) * cdf[:, -1:]
    draws = torch.searchsorted(cdf, targets, right=True)  # first k with cdf[k] > target
    # Rounding can put a target at the very top; map it to the last category that can be drawn.
    last_drawable = num_categories - 1 - (weights > 0).flip(1).to(torch.float32).argmax(dim=1)
    return torch.minimum(draws, last_drawable.unsqueeze(1))
