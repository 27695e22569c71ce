"""P1: global contrastive distillation of the student *encoder* (method.md §3.6).

The decoder is frozen at its random initialisation and the local branch has no effect in
P1, so neither student nor teacher runs its decoder here: only the bottlenecks are computed.
"""

from __future__ import annotations

import torch

from action_ray.config import DistillConfig
from action_ray.train.state import TrainState
from action_ray.train.steps.common import apply_update, detached, images_on_device, set_train_modes
from action_ray.train.steps.pretrain import global_branch, teacher_forward, views


def p1_step(state: TrainState, batch: dict[str, torch.Tensor], d: DistillConfig) -> dict[str, torch.Tensor]:
    """One P1 iteration on ``batch = {"image": (B, 1, *S), ...}`` (labels unused), with the
    ``distill`` settings ``d``.

    Order (§3.6): views -> EMA step of teacher (+ k-heads with ``teacher_head=ema``) from the
    pre-step student -> student encoder on the student view, teacher encoder on the teacher
    view -> L_glob against the bank -> enqueue the teacher keys (all ranks, rank order) ->
    update. Returns ``{"loss", "global"}`` (detached).
    """
    model, calls = state.model, state.forwards
    set_train_modes(state)
    x = images_on_device(state, batch["image"])
    model.update_teacher(state.ema_momentum)
    with state.autocast():
        x_student, x_teacher = views(state, x, d)
        student_latent = calls.student_encode(x_student)[-1]
        _, teacher_latent = teacher_forward(state, x_teacher, d, encoder_only=True)
        global_loss, teacher_keys = global_branch(state, student_latent, teacher_latent, d)
        loss = d.global_weight * global_loss
    state.global_bank.enqueue(teacher_keys)
    apply_update(state, loss)
    return detached({"loss": loss, "global": global_loss})
