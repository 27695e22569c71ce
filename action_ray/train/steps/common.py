"""Plumbing shared by every stage step: inputs onto the device, module modes, the update.

The update is the same in every stage (method.md §3.6 step 9, §4.6 step 10): backward, an
average of the gradients over workers, one SGD step, one schedule step. The gradient average
is done here with one ``all_reduce`` of a flat buffer rather than by wrapping the student in
DDP, because the steps call the student several times per iteration (FT: labelled, mixed and,
with ``ema_steps_per_iter=2``, clean unlabelled batches, each with its own BN statistics as
published), which a DDP module does not allow before one backward.
"""

from __future__ import annotations

import torch

from action_ray.augment.crop import random_crops
from action_ray.config import DataConfig
from action_ray.distributed import all_reduce_gradients_
from action_ray.losses import IGNORE_LABEL
from action_ray.train.state import TrainState


def images_on_device(state: TrainState, images: torch.Tensor) -> torch.Tensor:
    """Images (B, 1, *S) as float32 on the state's device, channels-last when configured."""
    images = images.to(state.device, dtype=torch.float32, non_blocking=True)
    if state.channels_last:
        fmt = torch.channels_last if images.dim() == 4 else torch.channels_last_3d
        images = images.contiguous(memory_format=fmt)
    return images


def labels_on_device(state: TrainState, labels: torch.Tensor) -> torch.Tensor:
    """Integer labels (B, *S) as int64 on the state's device."""
    return labels.to(state.device, dtype=torch.long, non_blocking=True)


def crop_batch(state: TrainState, batch: dict[str, torch.Tensor], data: DataConfig) -> dict[str, torch.Tensor]:
    """The batch on the state's device, cut to ``data.crop_size``² windows when cropping.

    Labelled images get foreground-centred windows with probability ``data.crop_foreground_p``
    (``augment.crop``); unlabelled ones uniform windows. Draws come from ``state.generator``,
    so a resumed run crops exactly as the uninterrupted one. Both batch layouts of
    ``train.steps`` are handled (P1/P2 rows without a label have all-zero labels, hence
    uniform windows).
    """
    if data.dims != 2 or data.crop_size is None:
        return batch
    out = {name: value.to(state.device, non_blocking=True) for name, value in batch.items()}
    size, p = data.crop_size, data.crop_foreground_p
    if "image" in out:
        out["image"], out["label"] = random_crops(out["image"], out["label"], size, p, state.generator)
    else:
        out["image_l"], out["label_l"] = random_crops(out["image_l"], out["label_l"], size, p, state.generator)
        if "image_u" in out:
            out["image_u"], _ = random_crops(out["image_u"], None, size, 0.0, state.generator)
    return out


def set_train_modes(state: TrainState, teacher_train: bool = True) -> None:
    """Student and heads in train mode; the teacher in train mode too unless ``teacher_train``
    is False (published: the teacher always uses batch statistics and active dropout, §2.3)."""
    state.model.train()
    state.model.teacher.train(teacher_train)


def apply_update(state: TrainState, loss: torch.Tensor) -> None:
    """backward -> gradient average over workers -> SGD step -> poly schedule step; step += 1."""
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # one flat all_reduce per (device, dtype); every rank runs the same stage code, so the
    # parameters with a gradient line up across ranks
    all_reduce_gradients_(p for group in state.optimizer.param_groups for p in group["params"])
    state.optimizer.step()
    state.scheduler.step()
    state.step += 1


def mask_unlabelled(labels: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
    """labels (B, *S) with every pixel of the unlabelled images (labelled (B,) False) set to
    `IGNORE_LABEL`, so the supervised loss sees only the labelled part without a host sync."""
    keep = labelled.to(device=labels.device, dtype=torch.bool).reshape(-1, *([1] * (labels.dim() - 1)))
    return torch.where(keep, labels, torch.full_like(labels, IGNORE_LABEL))


def detached(losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The step's result: detached float32 scalars (the caller decides when to sync)."""
    return {name: value.detach().float() for name, value in losses.items()}
