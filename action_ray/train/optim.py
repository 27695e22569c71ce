"""Optimiser and learning-rate schedule of one stage (method.md Part B §5.6, §6.7).

Every stage starts a fresh SGD (momentum 0.9, weight decay 1e-4; Nesterov in FT only) over the
parameters that stage trains, and a poly schedule lr = lr0 · (1 − t/T)^0.9 where t counts
completed optimiser steps. The schedule is a ``LambdaLR`` whose factor is a small callable
object (not a lambda), so ``scheduler.state_dict()`` round-trips through a checkpoint.
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR

from action_ray.config import StageConfig
from action_ray.model import ActionModel


class PolyDecay:
    """lr factor (1 − t/T)^power, clamped at 0 once t ≥ T (a run may overshoot by a step)."""

    def __init__(self, iterations: int, power: float = 0.9) -> None:
        if iterations < 1:
            raise ValueError(f"poly schedule needs iterations >= 1, got {iterations}")
        if power < 0:
            raise ValueError(f"poly schedule power must be >= 0, got {power}")
        self.iterations = int(iterations)
        self.power = float(power)

    def __call__(self, step: int) -> float:
        remaining = max(0.0, 1.0 - step / self.iterations)
        return remaining**self.power


def build_optimizer(model: ActionModel, stage: str, settings: StageConfig) -> torch.optim.SGD:
    """SGD over what ``stage`` trains (``ActionModel.param_groups``), everything else frozen.

    The whole model is frozen first, so parameters of other stages' heads (e.g. the global
    heads during FT) neither get gradients nor occupy optimiser state.
    """
    model.requires_grad_(False)
    groups = model.param_groups(stage)
    return torch.optim.SGD(
        groups,
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
        nesterov=settings.nesterov,
    )


def poly_schedule(optimizer: torch.optim.Optimizer, settings: StageConfig) -> LambdaLR:
    """The poly schedule of ``settings`` (iterations, poly_power) on ``optimizer``."""
    return LambdaLR(optimizer, PolyDecay(settings.iterations, settings.poly_power))
