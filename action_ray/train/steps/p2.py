"""P2: supervised + global + local contrastive distillation of the whole student (§3.6)."""

from __future__ import annotations

import torch

from action_ray.config import DistillConfig
from action_ray.losses import local_bank_entries, supervised_loss
from action_ray.train.state import TrainState
from action_ray.train.steps.common import (
    apply_update,
    detached,
    images_on_device,
    labels_on_device,
    mask_unlabelled,
    set_train_modes,
)
from action_ray.train.steps.diagnostics import gradient_alignment, is_report_step, record
from action_ray.train.steps.pretrain import global_branch, local_branch, teacher_forward, views


def p2_step(state: TrainState, batch: dict[str, torch.Tensor], d: DistillConfig) -> dict[str, torch.Tensor]:
    """One P2 iteration on ``{"image": (B, 1, *S), "label": (B, *S), "labelled": (B,) bool}``,
    with the ``distill`` settings ``d``.

    L = L_sup(labelled images) + k1·L_glob + k2·L_loc, both distillation losses over the whole
    batch. The labelled part is selected by masking the other images' labels (ignored by the
    loss) instead of slicing, so no tensor value is read on the host. Order as `p1_step`, with
    full student/teacher forwards and both banks enqueued after the losses.
    On report steps the weighted global and local gradients are compared with the supervised
    one on the student encoder and decoder (``steps.diagnostics``).
    Returns ``{"loss", "supervised", "global", "local"}`` (detached).
    """
    model, calls = state.model, state.forwards
    set_train_modes(state)
    x = images_on_device(state, batch["image"])
    target = mask_unlabelled(labels_on_device(state, batch["label"]), batch["labelled"])
    model.update_teacher(state.ema_momentum)
    with state.autocast():
        x_student, x_teacher = views(state, x, d)
        student = calls.student(x_student)
        teacher_logits, teacher_latent = teacher_forward(state, x_teacher, d)
        global_loss, teacher_keys = global_branch(state, student.bottleneck, teacher_latent, d)
        local_loss, teacher_patches = local_branch(state, student.logits, teacher_logits, d)
        sup = supervised_loss(student.logits, target)
        loss = sup + d.global_weight * global_loss + d.local_weight * local_loss
    if is_report_step(state.step, state.report_every, state.iterations):
        student_net = model.student
        record(state.extras, gradient_alignment(
            {"supervised": sup, "global": d.global_weight * global_loss, "local": d.local_weight * local_loss},
            "supervised",
            {"encoder": student_net.encoder.parameters(), "decoder": student_net.decoder.parameters()},
        ))
    state.global_bank.enqueue(teacher_keys)
    state.local_bank.enqueue(local_bank_entries(teacher_patches, d.local_layout))
    apply_update(state, loss)
    return detached({"loss": loss, "supervised": sup, "global": global_loss, "local": local_loss})
