"""Global and local distillation losses: float64 references, stability at T_t = 0.01, layouts."""

from __future__ import annotations

import math

import pytest
import torch

from action_ray.losses import (
    global_distillation_loss,
    local_bank_entries,
    local_distillation_loss,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _cos(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb)


def _log_softmax(values):
    top = max(values)
    log_total = top + math.log(sum(math.exp(v - top) for v in values))
    return [v - log_total for v in values]


def _kl_rows(student_rows, teacher_rows, anchors, t_s, t_t):
    """mean over rows of Σ_k p_t (log p_t - log p_s), p = softmax_k cos(row, anchor_k)/T."""
    total = 0.0
    for s_row, t_row in zip(student_rows, teacher_rows):
        log_ps = _log_softmax([_cos(s_row, a) / t_s for a in anchors])
        log_pt = _log_softmax([_cos(t_row, a) / t_t for a in anchors])
        total += sum(math.exp(lt) * (lt - ls) for lt, ls in zip(log_pt, log_ps))
    return total / len(student_rows)


def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("t_s,t_t", [(0.1, 0.01), (0.1, 0.6)])
def test_global_distillation_matches_formula(t_s, t_t):
    student, teacher, bank = _rand(6, 8, seed=1), _rand(6, 8, seed=2), _rand(36, 8, seed=3) * 5
    expected = _kl_rows(student.tolist(), teacher.tolist(), bank.tolist(), t_s, t_t)
    got = global_distillation_loss(student, teacher, bank, t_s, t_t)
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_local_per_position_matches_formula():
    num_patches, batch, dim, bank_size = 5, 3, 4, 7
    student = _rand(num_patches, batch, dim, seed=4)
    teacher = _rand(num_patches, batch, dim, seed=5)
    bank = _rand(bank_size, num_patches, dim, seed=6)
    per_pair = []
    for p in range(num_patches):
        anchors = [bank[k, p].tolist() for k in range(bank_size)]
        for b in range(batch):
            per_pair.append(_kl_rows([student[p, b].tolist()], [teacher[p, b].tolist()],
                                     anchors, 0.1, 0.01))
    expected = sum(per_pair) / len(per_pair)
    got = local_distillation_loss(student, teacher, bank, 0.1, 0.01, layout="per_position")
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_local_faithful_matches_published_reshapes():
    """Rows are consecutive P-long chunks of the (P, B, D) memory; the bank is transposed to
    (P, K, D) and cut the same way (method.md §3.3, faithful layout)."""
    num_patches, batch, dim, bank_size = 4, 3, 5, 6  # D not a multiple of P: rows straddle
    student = _rand(num_patches, batch, dim, seed=7)
    teacher = _rand(num_patches, batch, dim, seed=8)
    bank = _rand(bank_size, num_patches, dim, seed=9)
    flat_s = [student[p, b, d].item() for p in range(num_patches) for b in range(batch)
              for d in range(dim)]
    flat_t = [teacher[p, b, d].item() for p in range(num_patches) for b in range(batch)
              for d in range(dim)]
    flat_q = [bank[k, p, d].item() for p in range(num_patches) for k in range(bank_size)
              for d in range(dim)]

    def chunks(flat):
        return [flat[i:i + num_patches] for i in range(0, len(flat), num_patches)]

    rows_s, rows_t, anchors = chunks(flat_s), chunks(flat_t), chunks(flat_q)
    assert len(rows_s) == batch * dim and len(anchors) == bank_size * dim
    expected = _kl_rows(rows_s, rows_t, anchors, 0.1, 0.01)
    got = local_distillation_loss(student, teacher, bank, 0.1, 0.01, layout="faithful")
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_local_bank_entries_layouts():
    teacher = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)  # (P, B, D)
    per_position = local_bank_entries(teacher, "per_position")
    assert per_position.shape == (3, 2, 4)
    assert torch.equal(per_position[1, 0], teacher[0, 1])  # image 1, position 0
    faithful = local_bank_entries(teacher, "faithful")
    assert torch.equal(faithful.reshape(-1), teacher.reshape(-1))  # memory reinterpretation
    with pytest.raises(ValueError, match="layout"):
        local_bank_entries(teacher, "scrambled")


def test_detach_target_controls_teacher_gradient():
    student = _rand(4, 8, seed=10).requires_grad_()
    teacher = _rand(4, 8, seed=11).requires_grad_()
    bank = _rand(12, 8, seed=12)
    global_distillation_loss(student, teacher, bank, 0.1, 0.5).backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0
    student.grad = None
    global_distillation_loss(student, teacher, bank, 0.1, 0.5, detach_target=False).backward()
    assert teacher.grad is not None and teacher.grad.abs().sum() > 0


@pytest.mark.parametrize("detach_target", [True, False])
@pytest.mark.parametrize(
    "case", ["identical", "huge_norm", "zeros", "bank_equals_teacher", "opposite"]
)
def test_adversarial_inputs_are_finite_at_sharp_teacher(case, detach_target):
    dim = 16
    base = _rand(6, dim, seed=13).float()
    bank = _rand(36, dim, seed=14).float()
    if case == "identical":
        student, teacher, bank = base[:1].repeat(6, 1), base[:1].repeat(6, 1), \
            base[:1].repeat(36, 1)
    elif case == "huge_norm":
        student, teacher, bank = base * 1e30, base.flip(0) * 1e30, bank * 1e30
    elif case == "zeros":
        student, teacher = torch.zeros(6, dim), torch.zeros(6, dim)
    elif case == "bank_equals_teacher":
        student, teacher, bank = base, base, base.repeat(6, 1)
    else:
        student, teacher = base, -base
    student = student.clone().requires_grad_()
    teacher = teacher.clone().requires_grad_()
    loss = global_distillation_loss(student, teacher, bank, 0.1, 0.01,
                                    detach_target=detach_target)
    local = local_distillation_loss(
        student.reshape(6, 1, dim), teacher.reshape(6, 1, dim), bank.reshape(6, 6, dim)[:, :6],
        0.1, 0.01, detach_target=detach_target,
    )
    (loss + local).backward()
    assert torch.isfinite(loss) and torch.isfinite(local)
    assert torch.isfinite(student.grad).all()
    if not detach_target:
        assert torch.isfinite(teacher.grad).all()


def test_huge_norms_give_the_same_loss_as_unit_norms():
    student, teacher, bank = _rand(6, 8, seed=15).float(), _rand(6, 8, seed=16).float(), \
        _rand(36, 8, seed=17).float()
    reference = global_distillation_loss(student, teacher, bank)
    scaled = global_distillation_loss(student * 1e25, teacher * 1e30, bank * 1e33)
    assert scaled.item() == pytest.approx(reference.item(), rel=1e-4)


@pytest.mark.parametrize("detach_target", [True, False])
def test_200_training_steps_stay_finite_with_a_sharp_teacher(detach_target):
    """A tiny linear student/teacher pair trained with global + local distillation at
    T_t = 0.01 while both banks are refreshed every step, as in pre-training."""
    torch.manual_seed(0)
    in_dim, dim, num_patches, batch, bank_batches = 12, 16, 4, 6, 6
    student_head = torch.nn.Linear(in_dim, dim)
    teacher_head = torch.nn.Linear(in_dim, dim)
    params = list(student_head.parameters()) + list(teacher_head.parameters())
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    global_bank = torch.randn(bank_batches * batch, dim)
    local_bank = torch.randn(bank_batches * batch, num_patches, dim)
    pointer = 0
    for step in range(200):
        x = torch.randn(batch, in_dim)
        patches = torch.randn(num_patches, batch, in_dim)
        z_s, z_t = student_head(x), teacher_head(x + 0.01 * torch.randn_like(x))
        u_s, u_t = student_head(patches), teacher_head(patches)
        loss = global_distillation_loss(z_s, z_t, global_bank, 0.1, 0.01,
                                        detach_target=detach_target)
        loss = loss + local_distillation_loss(u_s, u_t, local_bank, 0.1, 0.01,
                                              detach_target=detach_target)
        optimizer.zero_grad()
        loss.backward()
        assert torch.isfinite(loss), f"loss not finite at step {step}"
        for param in params:
            if param.grad is not None:
                assert torch.isfinite(param.grad).all(), f"gradient not finite at step {step}"
        optimizer.step()
        rows = torch.arange(pointer, pointer + batch) % global_bank.shape[0]
        global_bank[rows] = z_t.detach()
        local_bank[rows] = local_bank_entries(u_t)
        pointer = (pointer + batch) % global_bank.shape[0]


def test_bad_shapes_and_temperatures_raise():
    with pytest.raises(ValueError, match="bank must have shape"):
        global_distillation_loss(torch.randn(2, 4), torch.randn(2, 4), torch.randn(5, 3))
    with pytest.raises(ValueError, match="teacher_temperature"):
        global_distillation_loss(torch.randn(2, 4), torch.randn(2, 4), torch.randn(5, 4),
                                 teacher_temperature=0.0)
    with pytest.raises(ValueError, match=r"bank must have shape \(K, 3, 4\)"):
        local_distillation_loss(torch.randn(3, 2, 4), torch.randn(3, 2, 4),
                                torch.randn(5, 2, 4))
    with pytest.raises(ValueError, match="layout"):
        local_distillation_loss(torch.randn(3, 2, 4), torch.randn(3, 2, 4),
                                torch.randn(5, 3, 4), layout="other")


def test_bank_may_be_enqueued_in_place_between_forward_and_backward():
    """§3.6 computes the logits, *then* enqueues the teacher keys, then steps: the in-place
    bank write must neither raise nor change the gradient."""
    student = _rand(6, 8, seed=18).requires_grad_()
    patches = _rand(3, 6, 8, seed=19).requires_grad_()
    teacher, teacher_patches = _rand(6, 8, seed=20), _rand(3, 6, 8, seed=21)
    grads = []
    for enqueue in (False, True):
        bank, local_bank = _rand(36, 8, seed=22), _rand(36, 3, 8, seed=23)
        loss = global_distillation_loss(student, teacher, bank) + local_distillation_loss(
            patches, teacher_patches, local_bank)
        if enqueue:
            bank[:6] = teacher
            local_bank[:6] = local_bank_entries(teacher_patches)
        student.grad, patches.grad = None, None
        loss.backward()
        grads.append((student.grad.clone(), patches.grad.clone()))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
