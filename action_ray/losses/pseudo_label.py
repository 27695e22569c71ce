"""Unsupervised pseudo-label loss L_unsup, ReCo style (method.md §4.3).

Every pixel of the (mixed) unlabeled batch is supervised by its hard pseudo-label; confidence
enters only through a per-image weight, the fraction of pixels above the strong threshold.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._tensors import check_rank_at_least, check_same_shape, compute_dtype
from .targets import IGNORE_LABEL


def pseudo_label_loss(
    logits: torch.Tensor,
    pseudo_labels: torch.Tensor,
    confidence: torch.Tensor,
    strong_threshold: float = 0.97,
) -> torch.Tensor:
    """L_unsup of §4.3: mean over pixels with positive CE of w_b · CE.

    w_b = #{x: confidence_b(x) >= strong_threshold} / #{x: pseudo_label_b(x) >= 0} is one
    weight per image; ℓ_b(x) = CE(logits_b(x), pseudo_label_b(x)) with label `IGNORE_LABEL` (-1) ignored
    (ℓ = 0 there). The result is Σ w_b ℓ_b(x) [ℓ_b(x) > 0] / #{(b, x): ℓ_b(x) > 0}; pixels whose
    loss is exactly zero are left out of the mean, as published. Computed without host sync:
    an image with no valid pixel has weight 0 (not NaN), and a batch with no positive loss gives
    0 (the published ``mean`` of an empty selection is NaN).

    Args:
        logits: (B, C, *S) student logits on the strongly augmented unlabeled batch.
        pseudo_labels: (B, *S) integer teacher arg-max labels, `IGNORE_LABEL` = ignore.
        confidence: (B, *S) teacher max-probability, mixed like the labels.
        strong_threshold: δ_s.
    Returns:
        scalar tensor.
    """
    check_rank_at_least("logits", logits, 3, "(B, C, *spatial)")
    spatial_shape = logits.shape[:1] + logits.shape[2:]
    check_same_shape("pseudo_labels", pseudo_labels.shape, "logits without the class axis",
                     spatial_shape)
    check_same_shape("confidence", confidence.shape, "logits without the class axis",
                     spatial_shape)
    scores = logits.to(compute_dtype(logits))
    labels = pseudo_labels.long()
    batch = labels.shape[0]

    confident = (confidence.detach() >= strong_threshold).reshape(batch, -1).sum(dim=1)
    labelled = (labels >= 0).reshape(batch, -1).sum(dim=1)
    image_weight = confident.to(scores.dtype) / labelled.clamp(min=1).to(scores.dtype)  # (B,)

    pixel_loss = F.cross_entropy(scores, labels, ignore_index=IGNORE_LABEL, reduction="none")
    counted = pixel_loss > 0  # (B, *S)
    weight = image_weight.reshape((batch,) + (1,) * (labels.dim() - 1))
    weighted_sum = torch.where(counted, weight * pixel_loss, torch.zeros_like(pixel_loss)).sum()
    return weighted_sum / counted.sum().clamp(min=1).to(scores.dtype)
