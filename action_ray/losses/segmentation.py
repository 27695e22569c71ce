"""Supervised segmentation loss: 0.5 * (cross-entropy + soft Dice), method.md §3.5.

Used on the labeled images in P2 and FT. The Dice term follows the published form exactly:
softmax probabilities, *squared* denominators, smoothing 1e-5, the background class included,
sums over the whole batch (not per image), then the mean over classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._tensors import check_rank_at_least, check_same_shape, compute_dtype
from .targets import IGNORE_LABEL

DICE_SMOOTH = 1e-5


def _check_logits_target(logits: torch.Tensor, target: torch.Tensor) -> None:
    check_rank_at_least("logits", logits, 3, "(B, C, *spatial)")
    check_same_shape("target", target.shape, "logits without the class axis",
                     logits.shape[:1] + logits.shape[2:])
    if target.dtype not in (torch.int64, torch.int32, torch.uint8, torch.int16, torch.int8):
        raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")


def dice_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_LABEL
) -> torch.Tensor:
    """Soft multi-class Dice loss of §3.5, background included.

    Dice_c = 1 - (2 Σ p_c g_c + s) / (Σ p_c² + Σ g_c² + s), s = 1e-5, L = mean_c Dice_c, where
    p = softmax(logits) and g = one-hot(target), the sums running over every image and pixel of
    the batch. Pixels whose target is ``ignore_index`` are left out of all three sums.

    Args:
        logits: (B, C, *S) raw scores; S is (H, W) or (D, H, W).
        target: (B, *S) integer class indices in [0, C) or ``ignore_index``.
    Returns:
        scalar tensor.
    """
    _check_logits_target(logits, target)
    num_classes = logits.shape[1]
    probs = torch.softmax(logits.to(compute_dtype(logits)), dim=1)
    target = target.long()
    valid = (target != ignore_index).unsqueeze(1).to(probs.dtype)  # (B, 1, *S)
    onehot = F.one_hot(target.clamp(0, num_classes - 1), num_classes).movedim(-1, 1)
    onehot = onehot.to(probs.dtype) * valid  # (B, C, *S)
    probs = probs * valid
    reduce_dims = [0] + list(range(2, logits.dim()))
    intersection = (probs * onehot).sum(reduce_dims)  # (C,)
    denominator = (probs * probs).sum(reduce_dims) + (onehot * onehot).sum(reduce_dims)
    dice_per_class = 1.0 - (2.0 * intersection + DICE_SMOOTH) / (denominator + DICE_SMOOTH)
    return dice_per_class.mean()


def supervised_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_LABEL
) -> torch.Tensor:
    """L_sup = 0.5 * (CE + Dice) of §3.5 for 2-D or 3-D logits.

    CE is the mean over all non-ignored pixels of the batch (the published code has no ignored
    pixels, where this is the plain mean over all pixels); a batch with every pixel ignored
    gives CE = 0 rather than NaN. Dice is :func:`dice_loss`.

    Args:
        logits: (B, C, *S) raw scores.
        target: (B, *S) integer labels, ``ignore_index`` marks pixels without supervision.
    Returns:
        scalar tensor.
    """
    _check_logits_target(logits, target)
    scores = logits.to(compute_dtype(logits))
    target = target.long()
    summed = F.cross_entropy(scores, target, ignore_index=ignore_index, reduction="sum")
    num_valid = (target != ignore_index).sum().clamp(min=1)
    cross_entropy = summed / num_valid
    return 0.5 * (cross_entropy + dice_loss(scores, target, ignore_index=ignore_index))
