"""FT: supervised + pseudo-label + anatomical contrast (method.md §4.6, with the §8.1 defaults).

Per iteration: pseudo-labels from the teacher on the clean unlabelled batch -> strong
augmentation (mix, photometric, warp of images *and* pseudo-labels, optional geometric) ->
two student forwards (labelled, mixed; separate BN batch statistics as published) -> one
representation-head call over both batches (the head has no BN, so this equals two calls),
by `representation.fast_representation` (the head's full-resolution 3x3 convolution was the
hot spot of the step: coarse levels are convolved before their up-sampling, and the backward
visits only the query pixels, the only ones L_anco sends gradient to) ->
L_sup + w_u·L_unsup + w_a·L_anco -> update -> EMA. ``ft.ema_steps_per_iter=2`` restores the
published extra student forward on the clean batch (BN statistics only) and the extra EMA step
before the update (§8.1). With ``ft.anco_negatives=bank`` the negatives come from the
global class-wise pixel bank, which is fed a class-balanced sample of this step's pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from action_ray.config import FineTuneConfig
from action_ray.losses import (
    ClassKeyBank,
    anatomical_contrast_loss,
    pseudo_label_loss,
    sigmoid_rampup,
    supervised_loss,
)
from action_ray.losses.sampling import uniform_from_masks
from action_ray.model import ema_buffers_, ema_update_
from action_ray.train.state import TrainState
from action_ray.train.steps.common import (
    apply_update,
    detached,
    images_on_device,
    labels_on_device,
    set_train_modes,
)
from action_ray.train.steps.diagnostics import is_report_step, pseudo_label_summary, record
from action_ray.train.steps.representation import fast_representation


@torch.no_grad()
def pseudo_labels(state: TrainState, images: torch.Tensor, ft: FineTuneConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher arg-max labels and max-probability confidences on a clean batch (§4.1).

    images (B, 1, *S) -> (labels (B, *S) long, confidence (B, *S) float32). The teacher runs in
    train mode (published) unless ``ft.teacher_eval``.
    """
    state.model.teacher.train(not ft.teacher_eval)
    with state.autocast():
        logits = state.forwards.teacher(images).logits
    confidence, labels = torch.softmax(logits.float(), dim=1).max(dim=1)
    return labels, confidence


def contrast_inputs(
    labels: torch.Tensor, confidence: torch.Tensor, num_labelled: int, num_classes: int, weak_threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot labels (N, C, *S) and validity (N, *S) for L_anco over [labelled; unlabelled].

    Labelled pixels are all valid; unlabelled ones need confidence >= δ_w. Pixels with the
    ignore label (cutout) are never valid. labels, confidence: (N, *S), rows ``num_labelled:``
    being the unlabelled ones (confidence of the labelled rows is ignored).
    """
    onehot = F.one_hot(labels.clamp(min=0), num_classes).movedim(-1, 1)
    is_labelled = torch.arange(labels.shape[0], device=labels.device) < num_labelled
    is_labelled = is_labelled.reshape(-1, *([1] * (labels.dim() - 1)))
    valid = (is_labelled | (confidence >= weak_threshold)) & (labels >= 0)
    return onehot, valid


@torch.no_grad()
def sample_bank_pixels(
    rep: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, num_classes: int, per_class: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed-size, class-balanced sample of valid pixels to feed the class-wise pixel bank.

    rep (N, D, *S), labels (N, *S), valid (N, *S) bool -> (keys (C·per_class, D) detached,
    classes (C·per_class,) long). For each class with valid pixels, ``per_class`` of them drawn
    uniformly with replacement; for an absent class, ``per_class`` valid pixels of any class,
    filed under their own class. The size never depends on the data, so every rank gathers
    equally sized tensors and nothing is read on the host.
    """
    dim = rep.shape[1]
    table = rep.detach().movedim(1, -1).reshape(-1, dim)  # (X, D), pixels image-major
    flat_labels, flat_valid = labels.reshape(-1), valid.reshape(-1)
    classes = torch.arange(num_classes, device=labels.device)
    masks = (flat_labels.unsqueeze(0) == classes.unsqueeze(1)) & flat_valid  # (C, X)
    masks = torch.cat([masks, flat_valid.unsqueeze(0)])  # row C: any valid pixel
    rows = torch.where(masks[:num_classes].any(dim=1), classes, torch.full_like(classes, num_classes))
    index = uniform_from_masks(masks, rows.unsqueeze(1).expand(num_classes, per_class), generator).reshape(-1)
    return table[index].float(), flat_labels[index].clamp(min=0)


def _negative_keys(state: TrainState) -> ClassKeyBank | None:
    bank = state.pixel_bank
    return None if bank is None else ClassKeyBank(bank.keys.clone(), bank.filled.clone())


def pseudo_label_weight(step: int, iterations: int, ft: FineTuneConfig) -> float:
    """w_u(t) = ft.unsup_weight · exp(−5 (1 − t/ramp)²), ramp = ft.unsup_rampup × FT iterations.

    Published: no ramp (``unsup_rampup=0``), the full weight from step 1. A ramp keeps the
    first, least reliable pseudo-labels of a weak teacher from outweighing the labels.
    """
    ramp = ft.unsup_rampup * iterations
    return ft.unsup_weight * sigmoid_rampup(step, ramp)


def ft_step(state: TrainState, batch: dict[str, torch.Tensor], ft: FineTuneConfig) -> dict[str, torch.Tensor]:
    """One FT iteration on ``{"image_l": (B_l, 1, *S), "label_l": (B_l, *S), "image_u": (B_u, 1, *S)}``,
    with the ``ft`` settings.

    Returns ``{"loss", "supervised", "pseudo_label", "anatomical_contrast", "confident"}``
    (detached; ``confident`` is the fraction of mixed unlabelled pixels with confidence >= δ_s).
    """
    model, calls = state.model, state.forwards
    num_classes = model.student.num_classes
    set_train_modes(state)
    x_l = images_on_device(state, batch["image_l"])
    y_l = labels_on_device(state, batch["label_l"])
    x_u = images_on_device(state, batch["image_u"])
    x_l, y_l = state.weak_augment(x_l, y_l, state.generator)
    pseudo, confidence = pseudo_labels(state, x_u, ft)
    if is_report_step(state.step, state.report_every, state.iterations):
        record(state.extras, pseudo_label_summary(pseudo, confidence, ft.strong_threshold, num_classes))
    x_mix, y_mix, c_mix = state.strong_augment(x_u, pseudo, confidence, state.generator)
    with state.autocast():
        out_l = calls.student(x_l)
        out_u = calls.student(x_mix)
        sup = supervised_loss(out_l.logits, y_l)
        unsup = pseudo_label_loss(out_u.logits, y_mix, c_mix, ft.strong_threshold)
        labels = torch.cat([y_l, y_mix])
        rep = valid = None
        if ft.anco_weight > 0:
            features = [torch.cat(pair) for pair in zip(out_l.features, out_u.features)]
            # (B_l + B_u, D, *S), the head computed without its full-resolution cost (representation.py)
            rep = fast_representation(
                model.representation_head, features, x_l.shape[2:], num_classes * ft.num_queries
            )
            labelled_conf = torch.ones(y_l.shape, dtype=c_mix.dtype, device=c_mix.device)
            onehot, valid = contrast_inputs(
                labels, torch.cat([labelled_conf, c_mix]), x_l.shape[0], num_classes, ft.weak_threshold
            )
            probs = torch.softmax(torch.cat([out_l.logits, out_u.logits]).detach().float(), dim=1)
            anco = anatomical_contrast_loss(
                rep, onehot, valid, probs, ft.strong_threshold, ft.anco_temperature, ft.num_queries,
                ft.num_negatives, state.generator, negative_keys=_negative_keys(state),
            )
        else:  # the "without L_anco" ablation: no representation head, no pixel sampling
            anco = torch.zeros((), device=sup.device)
        loss = sup + pseudo_label_weight(state.step, state.iterations, ft) * unsup + ft.anco_weight * anco
    if ft.ema_steps_per_iter == 2:
        with torch.no_grad(), state.autocast():
            calls.student(x_u)  # published side effect: student BN statistics on the clean batch
        ema_update_(model.teacher, model.student, state.ema_momentum)
    apply_update(state, loss)
    ema_update_(model.teacher, model.student, state.ema_momentum)
    if ft.teacher_eval:  # an eval-mode teacher never refreshes its own BN statistics
        ema_buffers_(model.teacher, model.student, state.ema_momentum)
    if state.pixel_bank is not None and rep is not None:
        state.pixel_bank.enqueue(*sample_bank_pixels(rep, labels, valid, num_classes, ft.num_queries, state.generator))
    confident = (c_mix >= ft.strong_threshold).float().mean()
    return detached({
        "loss": loss, "supervised": sup, "pseudo_label": unsup, "anatomical_contrast": anco,
        "confident": confident,
    })
