"""Mean Teacher baseline pieces (method.md §5): softmax-MSE consistency and ramp-up.

The Mean Teacher baseline (Tarvainen & Valpola, as used by SSL4MIS) pulls the student's class
probabilities towards the EMA teacher's with a squared error, weighted by a sigmoid-shaped
ramp-up so that the untrained teacher does not dominate the first epochs.
"""

from __future__ import annotations

import math

import torch

from ._tensors import check_rank_at_least, check_same_shape, compute_dtype


def mean_teacher_consistency(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor
) -> torch.Tensor:
    """mean over all elements of (softmax(student) - softmax(teacher))², teacher detached.

    Args:
        student_logits: (B, C, *S) logits with gradient.
        teacher_logits: (B, C, *S) EMA-teacher logits; used as a constant target.
    Returns:
        scalar tensor.
    """
    check_rank_at_least("student_logits", student_logits, 2, "(B, C, *spatial)")
    check_same_shape("teacher_logits", teacher_logits.shape, "student_logits",
                     student_logits.shape)
    dtype = compute_dtype(student_logits)
    student_probs = torch.softmax(student_logits.to(dtype), dim=1)
    teacher_probs = torch.softmax(teacher_logits.detach().to(dtype), dim=1)
    return torch.mean((student_probs - teacher_probs) ** 2)


def sigmoid_rampup(step: float, rampup_length: float) -> float:
    """exp(-5 (1 - t)²) with t = clip(step / rampup_length, 0, 1); 1 when rampup_length is 0.

    A plain Python float (computed on the host from the step counter, never from tensors), to
    multiply the consistency weight with: weight(step) = 0.1 · sigmoid_rampup(epoch, 200) in
    the Mean Teacher baseline.
    """
    if rampup_length < 0:
        raise ValueError(f"rampup_length must be >= 0, got {rampup_length!r}")
    if rampup_length == 0:
        return 1.0
    progress = min(max(step, 0.0), rampup_length) / rampup_length
    return math.exp(-5.0 * (1.0 - progress) ** 2)
