"""Pieces shared by the two pre-training steps (P1, P2): views, EMA, the global branch and
the local branch (method.md §3.1-§3.3, with the §8.1 defaults). Each reads only the ``distill``
section, which it is given.

``distill.teacher_head`` decides how the teacher side is computed:

* ``grad`` (default, the published 2-D code): the k-heads are trainable and learn only through
  the non-detached KL target; the teacher *backbone* features are still constants;
* ``ema``: the k-heads are EMA copies of the q-heads (updated with the backbone by
  ``ActionModel.update_teacher``); teacher embeddings are computed without autograd and the
  KL target is detached.
"""

from __future__ import annotations

import torch

from action_ray.augment import pretrain_views
from action_ray.config import DistillConfig
from action_ray.distributed import shuffle_batch, unshuffle_batch
from action_ray.losses import global_distillation_loss, local_distillation_loss
from action_ray.model import embed_local_patches, extract_local_patches, pooled_local_patches
from action_ray.train.state import TrainState


def views(state: TrainState, x: torch.Tensor, d: DistillConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(student view, teacher view) of §3.1: shared jitter, teacher-only blur; (B, 1, *S) each.

    3-D volumes are z-scored, so they are not clamped to [0, 1] (§4.2).
    """
    return pretrain_views(
        x, state.generator, p_jitter=d.jitter_p, jitter=d.jitter_range, p_blur=d.blur_p,
        sigma=d.blur_sigma, clamp=(0.0, 1.0) if x.dim() == 4 else None,
    )


@torch.no_grad()
def teacher_forward(
    state: TrainState, x_teacher: torch.Tensor, d: DistillConfig, encoder_only: bool = False
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The target-producing teacher forward of §3.6 (step 4): (logits or None, bottleneck).

    With ``distill.shuffle_bn`` (MoCo's "shuffle BN", §3.4) the teacher runs on a random slice
    of the *global* batch (``distributed.shuffle_batch``) and its outputs are put back in this
    rank's order, so its BN batch statistics mix images of other ranks. ``encoder_only``
    (P1) runs just the encoder and returns ``(None, bottleneck)``.
    x_teacher: (B, 1, *S) -> logits (B, C, *S), bottleneck (B, C_lat, *S_lat).
    """
    calls = state.forwards
    shuffle = d.shuffle_bn
    if shuffle:
        x_teacher, undo = shuffle_batch(x_teacher, state.generator)
    if encoder_only:
        logits, bottleneck = None, calls.teacher_encode(x_teacher)[-1]
    else:
        out = calls.teacher(x_teacher)
        logits, bottleneck = out.logits, out.bottleneck
    if shuffle:
        bottleneck = unshuffle_batch(bottleneck, undo)
        logits = None if logits is None else unshuffle_batch(logits, undo)
    return logits, bottleneck


def teacher_head_trained(d: DistillConfig) -> bool:
    """True with ``teacher_head=grad``: k-heads in the graph, KL target not detached."""
    return d.teacher_head == "grad"


def global_branch(
    state: TrainState, student_latent: torch.Tensor, teacher_latent: torch.Tensor, d: DistillConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """L_glob (§3.2) against the current global bank, and the teacher keys to enqueue.

    student_latent, teacher_latent: (B, C_lat, *S_lat) bottlenecks (teacher without grad).
    Returns (loss scalar, z_t (B, d_g)).
    """
    model = state.model
    z_s = model.global_predictor(model.global_q(student_latent))  # (B, d_g)
    with torch.set_grad_enabled(teacher_head_trained(d)):
        z_t = model.global_k(teacher_latent)  # (B, d_g)
    bank = state.global_bank.keys.clone()  # constant snapshot: the bank is written after this
    loss = global_distillation_loss(
        z_s, z_t, bank, d.student_temperature, d.teacher_temperature,
        detach_target=not teacher_head_trained(d),
    )
    return loss, z_t


def local_patch_embeddings(
    logits: torch.Tensor, heads: tuple[torch.nn.Module, ...], cut: tuple[int, int, int]
) -> torch.Tensor:
    """Logits (B, C, *S) -> local embeddings (P, B, D_l) through ``heads`` (§3.3).

    Pools the whole map once and windows the pooled map when the cut/stride/pool sizes allow
    it (the published 64/32/8 and 20/10/4 do): 4x less work than pooling overlapping windows.
    ``cut`` is (size, stride, pooling), `TrainState.local_cut`.
    """
    size, stride, pooling = cut
    if size % pooling == 0 and stride % (size // pooling) == 0:
        patches = pooled_local_patches(logits, size, stride, pooling)
    else:
        patches = extract_local_patches(logits, size, stride)
    return embed_local_patches(patches, *heads)


def local_branch(
    state: TrainState, student_logits: torch.Tensor, teacher_logits: torch.Tensor, d: DistillConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """L_loc (§3.3) in ``distill.local_layout`` against the local bank, and the teacher patch
    embeddings (P, B, D_l) to enqueue (via ``local_bank_entries``)."""
    model = state.model
    u_s = local_patch_embeddings(student_logits, (model.local_q, model.local_predictor), state.local_cut)
    with torch.set_grad_enabled(teacher_head_trained(d)):
        u_t = local_patch_embeddings(teacher_logits, (model.local_k,), state.local_cut)
    bank = state.local_bank.keys.clone()
    loss = local_distillation_loss(
        u_s, u_t, bank, d.student_temperature, d.teacher_temperature, layout=d.local_layout,
        detach_target=not teacher_head_trained(d),
    )
    return loss, u_t
