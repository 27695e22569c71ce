"""Contrastive distillation losses of pre-training: L_glob (§3.2) and L_loc (§3.3).

Both compare a student and a teacher *similarity distribution* over the anchors of a memory
bank: p = softmax(cos(z, bank) / T), with a sharp teacher (T_t = 0.01) and a softer student
(T_s = 0.1), and minimise KL(p_t || p_s) averaged over rows.

Departures from the published code (method.md §8.1), each deliberate:

* log-softmax throughout and ``kl_div(..., log_target=True)``: at T_t = 0.01 the teacher
  softmax underflows to exact zeros and softmax-then-log produces NaN (``0 * log 0``);
* the teacher target is detached by default (``detach_target=True``); ``False`` reproduces the
  published behaviour in which the teacher projection head is trained through the KL target;
* cosine similarities are computed with an overflow-safe normalisation, so even embeddings
  with norms around 1e30 give finite losses and gradients.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ._tensors import check_positive, check_same_shape, compute_dtype, unit_vectors

LocalLayout = Literal["per_position", "faithful"]
LOCAL_LAYOUTS: tuple[str, ...] = ("per_position", "faithful")


def similarity_log_probs(
    embeddings: torch.Tensor, anchors: torch.Tensor, temperature: float
) -> torch.Tensor:
    """log softmax_k( cos(embeddings, anchors_k) / temperature ).

    Args:
        embeddings: (R, D) rows to compare.
        anchors: (K, D) bank rows (raw; normalised here).
    Returns:
        (R, K) log-probabilities over the anchors.
    """
    dtype = compute_dtype(embeddings)
    cosine = unit_vectors(embeddings.to(dtype)) @ unit_vectors(anchors.to(dtype)).T
    return torch.log_softmax(cosine / temperature, dim=-1)


def _distillation_kl(
    student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, detach_target: bool
) -> torch.Tensor:
    """KL(p_t || p_s) summed over the last axis, averaged over rows: (R, K) -> scalar."""
    if detach_target:
        teacher_log_probs = teacher_log_probs.detach()
    return F.kl_div(
        student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True
    )


def global_distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    bank: torch.Tensor,
    student_temperature: float = 0.1,
    teacher_temperature: float = 0.01,
    detach_target: bool = True,
) -> torch.Tensor:
    """L_glob of §3.2: KL between teacher and student similarity distributions over the bank.

    L = (1/B) Σ_i Σ_k p_t(i,k) [log p_t(i,k) - log p_s(i,k)], with
    p(i,k) = softmax_k cos(z_i, bank_k) / T. The bank is read as a constant (it holds teacher
    embeddings of *previous* steps; enqueue the current ones only after calling this).

    Args:
        student: (B, D) student embeddings z_s (q-head then predictor).
        teacher: (B, D) teacher embeddings z_t (k-head).
        bank: (K, D) raw teacher embeddings; rows are L2-normalised here.
        student_temperature: T_s.
        teacher_temperature: T_t.
        detach_target: stop the gradient through the teacher distribution (action-ray
            default); ``False`` lets the teacher head learn through the target (published).
    Returns:
        scalar tensor.
    """
    if student.dim() != 2:
        raise ValueError(f"student must have shape (B, D), got {tuple(student.shape)}")
    check_same_shape("teacher", teacher.shape, "student", student.shape)
    if bank.dim() != 2 or bank.shape[1] != student.shape[1]:
        raise ValueError(
            f"bank must have shape (K, {student.shape[1]}) to match the embeddings, "
            f"got {tuple(bank.shape)}"
        )
    check_positive("student_temperature", student_temperature)
    check_positive("teacher_temperature", teacher_temperature)
    bank = bank.detach()
    log_p_student = similarity_log_probs(student, bank, student_temperature)
    log_p_teacher = similarity_log_probs(teacher, bank, teacher_temperature)
    return _distillation_kl(log_p_student, log_p_teacher, detach_target)


def _per_position_log_probs(
    patches: torch.Tensor, bank: torch.Tensor, temperature: float
) -> torch.Tensor:
    """(P, B, D) patches against (K, P, D) per-position bank -> (P, B, K) log-probs."""
    dtype = compute_dtype(patches)
    cosine = torch.einsum(
        "pbd,kpd->pbk", unit_vectors(patches.to(dtype)), unit_vectors(bank.to(dtype))
    )
    return torch.log_softmax(cosine / temperature, dim=-1)


def _faithful_rows(patches: torch.Tensor) -> torch.Tensor:
    """Published row cut: the (P, B, D) memory read as (B·D) rows of P numbers (§3.3)."""
    num_patches, batch, dim = patches.shape
    return patches.contiguous().reshape(batch * dim, num_patches)


def _faithful_bank_rows(bank: torch.Tensor) -> torch.Tensor:
    """Published bank matrix: (K, P, D) -> transpose (P, K, D) -> (K·D) rows of P (§3.3)."""
    bank_size, num_patches, dim = bank.shape
    return bank.transpose(0, 1).contiguous().reshape(bank_size * dim, num_patches)


def local_distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    bank: torch.Tensor,
    student_temperature: float = 0.1,
    teacher_temperature: float = 0.01,
    layout: LocalLayout = "per_position",
    detach_target: bool = True,
) -> torch.Tensor:
    """L_loc of §3.3 over patch embeddings, in one of two bank layouts.

    ``per_position`` (action-ray default, the "clean" design): the embedding of patch p of
    image b is compared with the K bank entries of the same position p,
    p(p,b,k) = softmax_k cos(u[p,b], bank[k,p]) / T, and the loss is KL(p_t || p_s) averaged
    over all (p, b). One einsum, no loop over positions.

    ``faithful`` (code parity, ablation): the published row-major reinterpretations. Student
    and teacher are read as (B·D, P) matrices of consecutive memory chunks, the bank as
    transpose(0, 1) then (K·D, P); softmax over all K·D bank rows, KL averaged over the B·D
    rows. The bank must then have been filled with :func:`local_bank_entries` in the same
    layout.

    Args:
        student: (P, B, D) student patch embeddings (patch-major, as stacked in §3.3).
        teacher: (P, B, D) teacher patch embeddings.
        bank: (K, P, D) past teacher entries, read as constants.
        student_temperature: T_s.
        teacher_temperature: T_t.
        layout: ``"per_position"`` or ``"faithful"``.
        detach_target: as in :func:`global_distillation_loss`.
    Returns:
        scalar tensor.
    """
    if student.dim() != 3:
        raise ValueError(f"student must have shape (P, B, D), got {tuple(student.shape)}")
    check_same_shape("teacher", teacher.shape, "student", student.shape)
    num_patches, _, dim = student.shape
    if bank.dim() != 3 or bank.shape[1:] != (num_patches, dim):
        raise ValueError(
            f"bank must have shape (K, {num_patches}, {dim}) to match the patch embeddings, "
            f"got {tuple(bank.shape)}"
        )
    check_positive("student_temperature", student_temperature)
    check_positive("teacher_temperature", teacher_temperature)
    bank = bank.detach()
    if layout == "per_position":
        log_p_student = _per_position_log_probs(student, bank, student_temperature)
        log_p_teacher = _per_position_log_probs(teacher, bank, teacher_temperature)
        num_anchors = bank.shape[0]
        return _distillation_kl(
            log_p_student.reshape(-1, num_anchors),
            log_p_teacher.reshape(-1, num_anchors),
            detach_target,
        )
    if layout == "faithful":
        bank_rows = _faithful_bank_rows(bank)
        log_p_student = similarity_log_probs(_faithful_rows(student), bank_rows,
                                             student_temperature)
        log_p_teacher = similarity_log_probs(_faithful_rows(teacher), bank_rows,
                                             teacher_temperature)
        return _distillation_kl(log_p_student, log_p_teacher, detach_target)
    raise ValueError(f"layout must be one of {LOCAL_LAYOUTS}, got {layout!r}")


def local_bank_entries(teacher: torch.Tensor, layout: LocalLayout = "per_position") -> torch.Tensor:
    """What to enqueue into a (K, P, D) local bank after a step: (P, B, D) -> (B, P, D).

    ``per_position``: entry b holds the P patch embeddings of image b, so bank[k, p] is always
    a patch at position p. ``faithful``: the published enqueue, a row-major reinterpretation
    of the patch-major memory (slab b' holds the flat (patch, image) vectors
    36·b' .. 36·b'+35), kept only so that ``layout="faithful"`` reads what the code wrote.
    The result is detached: banks hold constants.
    """
    if teacher.dim() != 3:
        raise ValueError(f"teacher must have shape (P, B, D), got {tuple(teacher.shape)}")
    num_patches, batch, dim = teacher.shape
    teacher = teacher.detach()
    if layout == "per_position":
        return teacher.transpose(0, 1).contiguous()
    if layout == "faithful":
        return teacher.contiguous().reshape(batch, num_patches, dim)
    raise ValueError(f"layout must be one of {LOCAL_LAYOUTS}, got {layout!r}")
