"""The baselines that share ACTION's data path and model (method.md §5).

* `supervised_step`: the labelled images only, L_sup (the "UNet-L" / "UNet-F" rows).
* `mean_teacher_step`: SSL4MIS Mean Teacher: one student forward over [labelled; unlabelled],
  EMA teacher on the unlabelled images plus clamped Gaussian noise, softmax-MSE consistency with
  the sigmoid ramp-up (weight ``mean_teacher.consistency``, ramped over
  ``mean_teacher.rampup_fraction`` of the FT iterations), EMA momentum min(1 − 1/(t+1), m).
* ACTION without pre-training is `ft_step` on a freshly built state (``action_ft_only``).
"""

from __future__ import annotations

import torch

from action_ray.config import MeanTeacherConfig
from action_ray.losses import mean_teacher_consistency, sigmoid_rampup, supervised_loss
from action_ray.model import ema_update_
from action_ray.train.state import TrainState
from action_ray.train.steps.common import (
    apply_update,
    detached,
    images_on_device,
    labels_on_device,
    set_train_modes,
)

TEACHER_NOISE_STD = 0.1
TEACHER_NOISE_CLAMP = 0.2


def supervised_step(state: TrainState, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One supervised-only iteration on ``{"image_l": (B, 1, *S), "label_l": (B, *S)}``; it
    reads no config section (the optimiser and augmentation are the state's).

    Returns ``{"loss", "supervised"}`` (detached; equal here).
    """
    set_train_modes(state)
    x = images_on_device(state, batch["image_l"])
    y = labels_on_device(state, batch["label_l"])
    x, y = state.weak_augment(x, y, state.generator)
    with state.autocast():
        sup = supervised_loss(state.forwards.student(x).logits, y)
    apply_update(state, sup)
    return detached({"loss": sup, "supervised": sup})


def consistency_weight(step: int, iterations: int, mt: MeanTeacherConfig) -> float:
    """w(t) = consistency · exp(−5 (1 − t/ramp)²), ramp = rampup_fraction × FT iterations."""
    ramp = mt.rampup_fraction * iterations
    return mt.consistency * sigmoid_rampup(step, ramp)


def mean_teacher_step(state: TrainState, batch: dict[str, torch.Tensor], mt: MeanTeacherConfig) -> dict[str, torch.Tensor]:
    """One Mean Teacher iteration on ``{"image_l", "label_l", "image_u"}`` (FT batch layout),
    with the ``mean_teacher`` settings ``mt``.

    Returns ``{"loss", "supervised", "consistency"}`` (detached; ``consistency`` unweighted).
    """
    model, calls = state.model, state.forwards
    set_train_modes(state)
    x_l = images_on_device(state, batch["image_l"])
    y_l = labels_on_device(state, batch["label_l"])
    x_u = images_on_device(state, batch["image_u"])
    x_l, y_l = state.weak_augment(x_l, y_l, state.generator)
    noise = torch.randn(x_u.shape, generator=state.generator, device=x_u.device, dtype=x_u.dtype)
    noise = (noise * TEACHER_NOISE_STD).clamp(-TEACHER_NOISE_CLAMP, TEACHER_NOISE_CLAMP)
    weight = consistency_weight(state.step, state.iterations, mt)
    with state.autocast():
        logits = calls.student(torch.cat([x_l, x_u])).logits
        with torch.no_grad():
            teacher_logits = calls.teacher(x_u + noise).logits
        num_labelled = x_l.shape[0]
        sup = supervised_loss(logits[:num_labelled], y_l)
        consistency = mean_teacher_consistency(logits[num_labelled:], teacher_logits)
        loss = sup + weight * consistency
    momentum = min(1.0 - 1.0 / (state.step + 1), state.ema_momentum)
    apply_update(state, loss)
    ema_update_(model.teacher, model.student, momentum)
    return detached({"loss": loss, "supervised": sup, "consistency": consistency})
