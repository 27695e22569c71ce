"""The stage step functions of ACTION and its baselines, as pure torch (no Ray).

Every step has one shape: ``step(state, batch, section) -> dict[str, Tensor]``, where
``section`` is the one config section the step reads (``distill`` for P1/P2, ``ft`` for FT,
``mean_teacher`` for Mean Teacher; supervised reads none). What every stage shares (EMA
momentum, the stage's length, the report cadence, the device) comes from the state. Why: a
step's signature then says which settings can change what it does, and a test or a caller
outside the training loop builds only that section. `bind_step` gives a step its section of a
whole config once, for the loop.

Each step runs the forward passes, losses, backward, gradient average over workers, optimiser
and schedule steps, EMA update(s) and bank enqueue(s) of one iteration, and returns detached
loss tensors (no ``.item()``: the caller decides when to synchronise with the device).

Batches:

* P1 / P2: ``{"image": (B, 1, *S), "label": (B, *S) long, "labelled": (B,) bool}``
* FT / Mean Teacher: ``{"image_l": (B_l, 1, *S), "label_l": (B_l, *S), "image_u": (B_u, 1, *S)}``
* supervised: ``{"image_l", "label_l"}``
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from action_ray.config import Config
from action_ray.errors import ConfigError
from action_ray.train.state import TrainState
from action_ray.train.steps.baselines import consistency_weight, mean_teacher_step, supervised_step
from action_ray.train.steps.ft import ft_step
from action_ray.train.steps.p1 import p1_step
from action_ray.train.steps.p2 import p2_step

#: A step bound to its settings: ``step(state, batch) -> losses``.
StepFunction = Callable[[TrainState, dict[str, torch.Tensor]], dict[str, torch.Tensor]]

#: (method, stage) -> (step function, the config section it takes, or None when it takes none).
#: ``action_ft_only`` is the FT step from a fresh model.
STEP_FUNCTIONS: dict[tuple[str, str], tuple[Callable[..., dict[str, torch.Tensor]], str | None]] = {
    ("action", "p1"): (p1_step, "distill"),
    ("action", "p2"): (p2_step, "distill"),
    ("action", "ft"): (ft_step, "ft"),
    ("action_ft_only", "ft"): (ft_step, "ft"),
    ("supervised", "ft"): (supervised_step, None),
    ("mean_teacher", "ft"): (mean_teacher_step, "mean_teacher"),
}


def step_function(method: str, stage: str) -> tuple[Callable[..., dict[str, torch.Tensor]], str | None]:
    """The step function that trains ``stage`` of ``method``, and the config section it takes."""
    try:
        return STEP_FUNCTIONS[(method, stage)]
    except KeyError:
        known = ", ".join(f"{m}/{s}" for m, s in STEP_FUNCTIONS)
        raise ConfigError(f"no step for method={method} stage={stage}; known: {known}") from None


def bind_step(config: Config, stage: str) -> StepFunction:
    """The step of ``config.method`` for ``stage``, given its config section once, so the loop
    calls ``step(state, batch)``."""
    function, section_name = step_function(config.method, stage)
    if section_name is None:
        return function
    section: Any = getattr(config, section_name)

    def step(state: TrainState, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return function(state, batch, section)

    step.__name__ = f"{function.__name__}[{section_name}]"
    return step


__all__ = [
    "STEP_FUNCTIONS",
    "StepFunction",
    "bind_step",
    "consistency_weight",
    "ft_step",
    "mean_teacher_step",
    "p1_step",
    "p2_step",
    "step_function",
    "supervised_step",
]
