"""Optimiser and learning-rate schedule of one stage (method.md §3.6, §4.6).

Every stage starts a fresh optimiser over the parameters that stage trains. Published: SGD
(momentum 0.9, weight decay 1e-4; Nesterov in FT only) with a poly schedule
lr = lr0 · (1 − t/T)^0.9, t counting completed optimiser steps; the schedule is a ``LambdaLR``
whose factor is a small callable object (not a lambda), so ``scheduler.state_dict()``
round-trips through a checkpoint. The short-run alternative is AdamW with torch's
``OneCycleLR`` (``optimizer=adamw``, ``lr_schedule=onecycle``): a few thousand steps are far
from the 30 000 the poly schedule was tuned for, and a warm-up plus cosine decay converges
faster there (docs/tune.md has the measurement).
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

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


def build_optimizer(model: ActionModel, stage: str, settings: StageConfig) -> torch.optim.Optimizer:
    """SGD or AdamW over what ``stage`` trains (``ActionModel.param_groups``), the rest frozen.

    The whole model is frozen first, so parameters of other stages' heads (e.g. the global
    heads during FT) neither get gradients nor occupy optimiser state.
    """
    model.requires_grad_(False)
    groups = model.param_groups(stage)
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=settings.lr, weight_decay=settings.weight_decay)
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


def stage_schedule(optimizer: torch.optim.Optimizer, settings: StageConfig) -> LRScheduler:
    """The schedule ``settings.lr_schedule`` names: poly (published) or one-cycle.

    One-cycle peaks at ``settings.lr`` after ``warmup_fraction`` of the stage and anneals by
    cosine to ~0 at the last step; it does not cycle momentum, so SGD keeps its momentum and
    AdamW its betas as configured.
    """
    if settings.lr_schedule == "onecycle":
        return OneCycleLR(optimizer, max_lr=settings.lr, total_steps=max(2, settings.iterations),
                          pct_start=settings.warmup_fraction, cycle_momentum=False)
    return poly_schedule(optimizer, settings)
