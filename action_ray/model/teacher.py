"""The momentum (EMA) teacher: theta_t <- m * theta_t + (1 - m) * theta_s (method.md §2.3).

`ema_update_` averages parameters only. BatchNorm running statistics are *not* copied: the
published teacher runs in train mode (batch statistics) throughout, so its buffers only follow its
own forwards. A teacher run in eval mode (``ft.teacher_eval``) never runs a train-mode forward, so
its running statistics would stay frozen at the hand-off while its weights move on; for it,
`ema_buffers_` averages the floating-point buffers the same way. The teacher never requires grad.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_ema_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with every parameter frozen (``requires_grad=False``)."""
    teacher = copy.deepcopy(module)
    teacher.requires_grad_(False)
    return teacher


def _paired_parameters(teacher: nn.Module, student: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Parameters of both modules in registration order, checked to be the same architecture."""
    t_named = list(teacher.named_parameters())
    s_named = list(student.named_parameters())
    if [(n, p.shape) for n, p in t_named] != [(n, p.shape) for n, p in s_named]:
        raise ValueError(
            "EMA teacher and student have different parameters "
            f"({len(t_named)} vs {len(s_named)} tensors); build the teacher with make_ema_copy(student)"
        )
    return [p for _, p in t_named], [p for _, p in s_named]


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """In place: every teacher parameter <- momentum * itself + (1 - momentum) * student's.

    Two fused multi-tensor calls (`torch._foreach_mul_` / `_foreach_add_`) instead of a Python
    loop over tensors; buffers (BN statistics) are left alone. ``momentum=0.99`` in the paper.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
    t_params, s_params = _paired_parameters(teacher, student)
    if not t_params:
        return
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)


@torch.no_grad()
def ema_buffers_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """In place: every floating-point teacher buffer (BN running mean/var) <- EMA of the student's.

    Integer buffers (``num_batches_tracked``) are copied. For an eval-mode teacher, whose running
    statistics must describe the weights it has now, not the ones it was handed at the start.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
    t_named, s_named = list(teacher.named_buffers()), list(student.named_buffers())
    if [(n, b.shape) for n, b in t_named] != [(n, b.shape) for n, b in s_named]:
        raise ValueError("EMA teacher and student have different buffers; build the teacher with make_ema_copy(student)")
    floats = [(t, s) for (_, t), (_, s) in zip(t_named, s_named) if t.is_floating_point()]
    if floats:
        torch._foreach_lerp_([t for t, _ in floats], [s for _, s in floats], 1.0 - momentum)
    for (_, t), (_, s) in zip(t_named, s_named):
        if not t.is_floating_point():
            t.copy_(s)


@torch.no_grad()
def copy_parameters_(target: nn.Module, source: nn.Module) -> None:
    """Set ``target``'s parameters to ``source``'s (FT starts its teacher from the P2 student)."""
    t_params, s_params = _paired_parameters(target, source)
    if t_params:
        torch._foreach_copy_(t_params, s_params)
