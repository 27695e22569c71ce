"""The stage step functions of ACTION and its baselines, as pure torch (no Ray).

Every step has one shape: ``step(state, batch, config) -> dict[str, Tensor]``. It runs the
forward passes, losses, backward, gradient average over workers, optimiser and schedule steps,
EMA update(s) and bank enqueue(s) of one iteration, and returns detached loss tensors (no
``.item()``: the caller decides when to synchronise with the device).

Batches:

* P1 / P2: ``{"image": (B, 1, *S), "label": (B, *S) long, "labelled": (B,) bool}``
* FT / Mean Teacher: ``{"image_l": (B_l, 1, *S), "label_l": (B_l, *S), "image_u": (B_u, 1, *S)}``
* supervised: ``{"image_l", "label_l"}``
"""

from __future__ import annotations

from typing import Callable

import torch

from action_ray.config import Config
from action_ray.errors import ConfigError
from action_ray.train.state import TrainState
from action_ray.train.steps.baselines import consistency_weight, mean_teacher_step, supervised_step
from action_ray.train.steps.ft import ft_step
from action_ray.train.steps.p1 import p1_step
from action_ray.train.steps.p2 import p2_step

StepFunction = Callable[[TrainState, dict[str, torch.Tensor], Config], dict[str, torch.Tensor]]

#: (method, stage) -> step function. ``action_ft_only`` is the FT step from a fresh model.
STEP_FUNCTIONS: dict[tuple[str, str], StepFunction] = {
    ("action", "p1"): p1_step,
    ("action", "p2"): p2_step,
    ("action", "ft"): ft_step,
    ("action_ft_only", "ft"): ft_step,
    ("supervised", "ft"): supervised_step,
    ("mean_teacher", "ft"): mean_teacher_step,
}


def step_function(method: str, stage: str) -> StepFunction:
    """The step function that trains ``stage`` of ``method``."""
    try:
        return STEP_FUNCTIONS[(method, stage)]
    except KeyError:
        known = ", ".join(f"{m}/{s}" for m, s in STEP_FUNCTIONS)
        raise ConfigError(f"no step for method={method} stage={stage}; known: {known}") from None


__all__ = [
    "STEP_FUNCTIONS",
    "StepFunction",
    "consistency_weight",
    "ft_step",
    "mean_teacher_step",
    "p1_step",
    "p2_step",
    "step_function",
    "supervised_step",
]
