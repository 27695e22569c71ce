"""Stage step functions (P1, P2, FT) and baselines: learning, invariants, determinism, resume.

Everything runs on the CPU with the ``cpu-demo`` preset shrunk to 32x32 slices (the local
branch then has 2x2 = 4 windows of 16 with stride 8), on a fixed synthetic mini-batch whose
labels are a function of the image, so that every loss has something to learn.
"""

from __future__ import annotations

import io

import pytest
import torch

from action_ray.config import load_config
from action_ray.errors import ConfigError
from action_ray.train.state import build_state, handoff_p1_to_p2, handoff_p2_to_ft
from action_ray.train.steps import (
    STEP_FUNCTIONS,
    ft_step,
    mean_teacher_step,
    p1_step,
    p2_step,
    bind_step,
    step_function,
    supervised_step,
)

NUM_CLASSES = 3
SIZE = 32


#: narrower than the cpu preset so the whole file stays within its CI time share
SMALL_MODEL = (
    "model.widths=[4, 8, 8, 16, 16]", "model.global_hidden=32", "model.global_dim=32",
    "model.representation_dim=16", "ft.num_queries=32", "ft.num_negatives=64",
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def make_config(*overrides: str):
    return load_config("cpu-demo", ["train.num_workers=1", f"data.slice_size={SIZE}", *SMALL_MODEL, *overrides])


def synthetic_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Discs and rings on a noisy background: label 1 inside a disc, 2 on a ring around it."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    centres = torch.randint(10, SIZE - 10, (n, 2), generator=g)
    dist = ((yy - centres[:, 0, None, None]) ** 2 + (xx - centres[:, 1, None, None]) ** 2).float().sqrt()
    labels = torch.zeros(n, SIZE, SIZE, dtype=torch.long)
    labels[dist < 8] = 2
    labels[dist < 5] = 1
    intensity = torch.tensor([0.1, 0.8, 0.45])[labels]
    images = (intensity + 0.05 * torch.randn(n, SIZE, SIZE, generator=g)).clamp(0, 1).unsqueeze(1)
    return images, labels


def pretrain_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    images, labels = synthetic_images(4, seed)
    return {"image": images, "label": labels, "labelled": torch.tensor([True, True, False, False])}


def ft_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    images, labels = synthetic_images(4, seed)
    return {"image_l": images[:2], "label_l": labels[:2], "image_u": images[2:]}


def call(step, state, batch, config):
    """``step`` on ``batch`` with the config section the step table says it takes."""
    section = {function: name for function, name in STEP_FUNCTIONS.values()}[step]
    return step(state, batch) if section is None else step(state, batch, getattr(config, section))


def run(state, step, batch, config, steps: int) -> list[float]:
    return [call(step, state, batch, config)["loss"].item() for _ in range(steps)]


STAGES = {
    "p1": ("action", "p1", p1_step, pretrain_batch),
    "p2": ("action", "p2", p2_step, pretrain_batch),
    "ft": ("action", "ft", ft_step, ft_batch),
    "supervised": ("supervised", "ft", supervised_step, ft_batch),
    "mean_teacher": ("mean_teacher", "ft", mean_teacher_step, ft_batch),
}


@pytest.mark.parametrize("name", list(STAGES))
def test_each_step_overfits_a_fixed_batch(name):
    method, stage, step, batch_fn = STAGES[name]
    config = make_config(f"method={method}", f"schedule.{stage}.iterations=40", f"schedule.{stage}.lr=0.03")
    state = build_state(config, NUM_CLASSES, "cpu", stage)
    losses = run(state, step, batch_fn(), config, 20)
    assert all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.8 * first, f"{name}: loss went {first:.4f} -> {last:.4f}: {losses}"
    assert state.step == 20


def test_step_function_table_and_unknown_pairs():
    assert step_function("action", "p2") == (p2_step, "distill")
    assert step_function("action_ft_only", "ft") == (ft_step, "ft")
    assert step_function("supervised", "ft") == (supervised_step, None)
    assert set(STEP_FUNCTIONS) >= {("supervised", "ft"), ("mean_teacher", "ft")}
    with pytest.raises(ConfigError, match="no step for method=supervised stage=p1"):
        step_function("supervised", "p1")


def test_bind_step_gives_each_step_its_own_config_section():
    """The loop's bound step is the step called with the section the table names: the same
    losses as the direct call, and the section it binds is the one that changes the result."""
    config = make_config("distill.global_weight=0.25")
    bound = bind_step(config, "p2")
    direct = p2_step(build_state(config, NUM_CLASSES, "cpu", "p2"), pretrain_batch(), config.distill)
    via_bind = bound(build_state(config, NUM_CLASSES, "cpu", "p2"), pretrain_batch())
    assert {k: v.item() for k, v in via_bind.items()} == {k: v.item() for k, v in direct.items()}
    default = bind_step(make_config(), "p2")(build_state(config, NUM_CLASSES, "cpu", "p2"), pretrain_batch())
    assert default["loss"].item() != via_bind["loss"].item()  # global_weight 1 vs 0.25 in the sum
    assert bind_step(make_config("method=supervised"), "ft") is supervised_step


def test_p1_trains_the_encoder_only_and_leaves_the_decoder_at_init():
    config = make_config()
    state = build_state(config, NUM_CLASSES, "cpu", "p1")
    student = state.model.student
    decoder = {k: v.clone() for k, v in student.decoder.named_parameters()}
    encoder = {k: v.clone() for k, v in student.encoder.named_parameters()}
    run(state, p1_step, pretrain_batch(), config, 3)
    for k, v in student.decoder.named_parameters():
        assert torch.equal(v, decoder[k]), k
    assert any(not torch.equal(v, encoder[k]) for k, v in student.encoder.named_parameters())


def _snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize("stage", ["p2", "ft"])
def test_teacher_moves_only_by_the_ema_formula(stage):
    config = make_config()
    state = build_state(config, NUM_CLASSES, "cpu", stage)
    model, m = state.model, config.ema_momentum
    step, batch = (p2_step, pretrain_batch()) if stage == "p2" else (ft_step, ft_batch())
    run(state, step, batch, config, 1)  # let student and teacher differ first
    teacher_before, student_before = _snapshot(model.teacher), _snapshot(model.student)
    run(state, step, batch, config, 1)
    # P1/P2: EMA from the pre-step student (§3.6); FT: after the optimiser step (§4.6)
    student_used = student_before if stage == "p2" else _snapshot(model.student)
    for t_new, t_old, s in zip(model.teacher.parameters(), teacher_before, student_used):
        torch.testing.assert_close(t_new, m * t_old + (1 - m) * s, rtol=0, atol=1e-6)
    assert all(not p.requires_grad for p in model.teacher.parameters())


def test_p2_supervised_loss_ignores_the_labels_of_unlabelled_images():
    config = make_config()
    batch = pretrain_batch()
    scrambled = dict(batch, label=batch["label"].clone())
    scrambled["label"][2:] = (scrambled["label"][2:] + 1) % NUM_CLASSES
    a = p2_step(build_state(config, NUM_CLASSES, "cpu", "p2"), batch, config.distill)
    b = p2_step(build_state(config, NUM_CLASSES, "cpu", "p2"), scrambled, config.distill)
    assert torch.equal(a["supervised"], b["supervised"])
    assert torch.equal(a["loss"], b["loss"])


@pytest.mark.parametrize("stage", ["p2", "ft"])
def test_same_seed_gives_identical_losses(stage):
    config = make_config("ft.anco_negatives=bank")
    step, batch = (p2_step, pretrain_batch()) if stage == "p2" else (ft_step, ft_batch())
    a = run(build_state(config, NUM_CLASSES, "cpu", stage), step, batch, config, 4)
    b = run(build_state(config, NUM_CLASSES, "cpu", stage), step, batch, config, 4)
    assert a == b
    other = make_config("ft.anco_negatives=bank", "train.seed=7")
    c = run(build_state(other, NUM_CLASSES, "cpu", stage), step, batch, other, 4)
    assert c != a


@pytest.mark.parametrize("stage", ["p2", "ft"])
def test_state_dict_round_trip_continues_the_same_trajectory(stage):
    config = make_config("ft.anco_negatives=bank", "ft.ema_steps_per_iter=2")
    step = p2_step if stage == "p2" else ft_step
    batches = [pretrain_batch(i) if stage == "p2" else ft_batch(i) for i in range(6)]

    straight = build_state(config, NUM_CLASSES, "cpu", stage)
    expected = [call(step, straight, b, config)["loss"].item() for b in batches]

    first = build_state(config, NUM_CLASSES, "cpu", stage)
    got = [call(step, first, b, config)["loss"].item() for b in batches[:3]]
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    # a different seed everywhere: everything that matters must come from the checkpoint
    resumed = build_state(make_config("ft.anco_negatives=bank", "ft.ema_steps_per_iter=2", "train.seed=99"),
                          NUM_CLASSES, "cpu", stage)
    torch.manual_seed(12345)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.step == 3
    got += [call(step, resumed, b, config)["loss"].item() for b in batches[3:]]
    assert got == expected


def test_load_state_dict_refuses_another_stage():
    config = make_config()
    p1 = build_state(config, NUM_CLASSES, "cpu", "p1")
    p2 = build_state(config, NUM_CLASSES, "cpu", "p2")
    with pytest.raises(ConfigError, match="stage=p1"):
        p2.load_state_dict(p1.state_dict())


def test_handoffs_carry_backbones_and_restart_heads_banks_and_schedule():
    config = make_config()
    state = build_state(config, NUM_CLASSES, "cpu", "p1")
    run(state, p1_step, pretrain_batch(), config, 2)
    model = state.model
    student, teacher = model.student.state_dict(), model.teacher.state_dict()
    global_q = _snapshot(model.global_q)
    p2 = handoff_p1_to_p2(state)
    assert p2.stage == "p2" and p2.step == 0 and p2.model is model
    assert all(torch.equal(v, student[k]) for k, v in model.student.state_dict().items())
    assert all(torch.equal(v, teacher[k]) for k, v in model.teacher.state_dict().items())
    assert not all(torch.equal(a, b) for a, b in zip(model.global_q.parameters(), global_q))
    assert int(p2.global_bank.ptr) == 0 and p2.local_bank is not None
    assert p2.scheduler.get_last_lr()[0] == config.schedule.p2.lr
    assert all(p.requires_grad for p in model.student.decoder.parameters())

    run(p2, p2_step, pretrain_batch(), config, 2)
    rep_head = _snapshot(model.representation_head)
    ft = handoff_p2_to_ft(p2)
    assert ft.stage == "ft" and ft.global_bank is None
    for name, value in model.student.state_dict().items():
        assert torch.equal(model.teacher.state_dict()[name], value), name
    assert not all(torch.equal(a, b) for a, b in zip(model.representation_head.parameters(), rep_head))
    assert ft.optimizer.param_groups[0]["nesterov"] == config.schedule.ft.nesterov
    assert not any(p.requires_grad for p in model.global_q.parameters())
    run(ft, ft_step, ft_batch(), config, 1)


def test_handoffs_give_every_rank_the_same_new_heads_and_keep_the_dropout_stream():
    config = make_config()
    ranks = [build_state(config, NUM_CLASSES, "cpu", "p1", rank=r) for r in (0, 1)]
    assert not torch.equal(ranks[0].generator.get_state(), ranks[1].generator.get_state())
    dropout_stream = torch.get_rng_state()
    p2 = [handoff_p1_to_p2(s) for s in ranks]
    ft = [handoff_p2_to_ft(s) for s in p2]
    assert torch.equal(torch.get_rng_state(), dropout_stream)
    for a, b in zip(ft[0].model.state_dict().values(), ft[1].model.state_dict().values()):
        assert torch.equal(a, b)


def test_shuffle_bn_puts_the_teacher_outputs_back_in_batch_order():
    """One process: BN batch statistics do not depend on the order of the batch, so with
    dropout off the shuffled teacher forward must give the plain one's outputs exactly where
    a wrong un-permutation would swap images."""
    from action_ray.distributed import shuffle_batch
    from action_ray.train.steps.pretrain import teacher_forward

    config = make_config("distill.shuffle_bn=true")
    state = build_state(config, NUM_CLASSES, "cpu", "p2")
    state.model.train()
    for module in state.model.teacher.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    x = pretrain_batch()["image"]
    state.generator.manual_seed(3)  # randperm(4) = [2, 3, 1, 0]: moves every image
    probe = torch.Generator().set_state(state.generator.get_state())
    moved = shuffle_batch(x, probe)[0]
    assert all(not torch.equal(moved[i], x[i]) for i in range(4)), "the draw must move every image"
    before = state.generator.get_state()
    logits, latent = teacher_forward(state, x, config.distill)
    assert not torch.equal(state.generator.get_state(), before), "the batch was not shuffled"
    after = state.generator.get_state()
    plain_logits, plain_latent = teacher_forward(state, x, make_config().distill)
    assert torch.equal(state.generator.get_state(), after)
    torch.testing.assert_close(logits, plain_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(latent, plain_latent, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(latent[0], latent[1]), "images must differ for the check to bite"
    for stage, step in (("p1", p1_step), ("p2", p2_step)):
        out = step(build_state(config, NUM_CLASSES, "cpu", stage), pretrain_batch(), config.distill)
        assert torch.isfinite(out["loss"])


def test_options_teacher_head_grad_and_faithful_local_layout_train():
    config = make_config("distill.teacher_head=grad", "distill.local_layout=faithful")
    state = build_state(config, NUM_CLASSES, "cpu", "p2")
    local_k = _snapshot(state.model.local_k)
    out = p2_step(state, pretrain_batch(), config.distill)
    assert torch.isfinite(out["loss"])
    # with teacher_head=grad the k-heads learn through the KL target (published 2-D code)
    assert not all(torch.equal(a, b) for a, b in zip(state.model.local_k.parameters(), local_k))


def test_ft_with_bank_negatives_fills_the_pixel_bank_and_geo_aug_runs():
    config = make_config("ft.anco_negatives=bank", "ft.geo_aug=true", "ft.teacher_eval=true")
    state = build_state(config, NUM_CLASSES, "cpu", "ft")
    first = ft_step(state, ft_batch(), config.ft)
    assert first["anatomical_contrast"].item() == 0.0  # empty bank: no negatives yet
    assert state.pixel_bank.filled.tolist() == [config.ft.num_queries] * NUM_CLASSES
    second = ft_step(state, ft_batch(), config.ft)
    assert second["anatomical_contrast"].item() > 0.0


def _running_means(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([b.flatten() for n, b in module.named_buffers() if n.endswith("running_mean")])


@pytest.mark.parametrize("teacher_eval", [False, True])
def test_ft_teacher_bn_statistics_follow_the_student_only_in_eval_mode(teacher_eval):
    """An eval-mode teacher never runs a train-mode forward: its running statistics must be
    averaged from the student's or they stay frozen at the hand-off (found in issue 5)."""
    config = make_config(f"ft.teacher_eval={str(teacher_eval).lower()}", "ema_momentum=0.5")
    state = build_state(config, NUM_CLASSES, "cpu", "ft")
    before = _running_means(state.model.teacher).clone()
    ft_step(state, ft_batch(), config.ft)
    teacher, student = _running_means(state.model.teacher), _running_means(state.model.student)
    assert not torch.equal(teacher, before)  # train mode: its own forward; eval mode: the EMA
    if teacher_eval:
        torch.testing.assert_close(teacher, 0.5 * before + 0.5 * student)
    else:
        assert not torch.allclose(teacher, 0.5 * before + 0.5 * student)


def test_step_returns_detached_tensors():
    config = make_config()
    out = p2_step(build_state(config, NUM_CLASSES, "cpu", "p2"), pretrain_batch(), config.distill)
    assert all(isinstance(v, torch.Tensor) and not v.requires_grad and v.dim() == 0 for v in out.values())


@pytest.mark.slow
def test_full_p2_step_stays_finite_for_200_steps_at_sharp_teacher_temperature():
    config = make_config(
        "distill.teacher_temperature=0.01", "schedule.p2.iterations=200", "schedule.p2.lr=0.05",
    )
    state = build_state(config, NUM_CLASSES, "cpu", "p2")
    g = torch.Generator().manual_seed(3)
    losses = []
    for _ in range(200):
        batch = {
            "image": torch.rand(4, 1, SIZE, SIZE, generator=g),
            "label": torch.randint(0, NUM_CLASSES, (4, SIZE, SIZE), generator=g),
            "labelled": torch.tensor([True, True, False, False]),
        }
        losses.append(torch.stack(list(p2_step(state, batch, config.distill).values())))
    assert torch.isfinite(torch.stack(losses)).all()
    assert all(torch.isfinite(p).all() for p in state.model.parameters())


def test_the_module_runs_with_one_torch_thread():
    """The conftest fixture is in effect (CI runners have 2 cores, so the default is 2)."""
    assert torch.get_num_threads() == 1
