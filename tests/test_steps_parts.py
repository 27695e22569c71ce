"""Parts around the step functions: the separable and sparse-gradient representation heads, the optimiser and
schedule, 3-D steps, the compiled path and ``action-ray bench step``."""

from __future__ import annotations

import argparse
import os

import pytest
import torch

from action_ray.config import load_config
from action_ray.model import RepresentationHead
from action_ray.train.optim import PolyDecay, build_optimizer, poly_schedule
from action_ray.train.state import build_model, build_state
from action_ray.train.steps import ft_step, p2_step
from action_ray.train.steps.representation import (
    fast_representation,
    separable_representation,
    shifted_interpolation_matrices,
    sparse_grad_representation,
    takes_separable_path,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def without_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


@pytest.mark.parametrize("dims", [2, 3])
def test_sparse_grad_head_matches_the_dense_head_when_few_pixels_get_gradient(dims):
    torch.manual_seed(dims)
    head = RepresentationHead(12, 6, dims).double()
    size = (8, 8) if dims == 2 else (4, 6, 5)
    features = [
        torch.randn(3, 8, *size, dtype=torch.float64, requires_grad=True),
        torch.randn(3, 4, *[s // 2 for s in size], dtype=torch.float64, requires_grad=True),
    ]
    # upstream gradient on 6 pixels only, two of them on the border (zero padding matters there)
    rows = torch.zeros(3 * torch.tensor(size).prod().item(), 6, dtype=torch.float64)
    chosen = torch.tensor([0, 5, 17, 40, rows.shape[0] - 1, 63])
    rows[chosen] = torch.randn(len(chosen), 6, dtype=torch.float64)
    upstream = rows.reshape(3, *size, 6).movedim(-1, 1)
    wrt = features + list(head.parameters())

    dense = head(features, size)
    expected = torch.autograd.grad((dense * upstream).sum(), wrt)
    sparse = sparse_grad_representation(head, features, size, max_pixels=10)
    torch.testing.assert_close(sparse, dense)
    got = torch.autograd.grad((sparse * upstream).sum(), wrt)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
    # too small a budget drops pixels: the gradient is then (knowingly) incomplete
    short = torch.autograd.grad((sparse_grad_representation(head, features, size, 3) * upstream).sum(), wrt)
    assert not torch.allclose(short[0], expected[0])


def test_shifted_interpolation_matrices_are_align_corners_upsampling_shifted_with_zero_padding():
    signal = torch.randn(5, dtype=torch.float64)
    up = torch.nn.functional.interpolate(signal.reshape(1, 1, 5), size=13, mode="linear", align_corners=True)[0, 0]
    matrices = shifted_interpolation_matrices(5, 13, torch.float64, "cpu")
    padded = torch.cat([up.new_zeros(1), up, up.new_zeros(1)])
    for tap in range(3):
        torch.testing.assert_close(matrices[tap] @ signal, padded[tap : tap + 13])


@pytest.mark.parametrize("max_pixels", [None, 10])
def test_separable_head_matches_the_dense_head_in_values_and_gradients(max_pixels):
    torch.manual_seed(0)
    size = (16, 16)
    # a wide coarse level (separable), a narrow mid level and a full-resolution one (direct)
    features = [
        torch.randn(3, 40, 2, 2, dtype=torch.float64, requires_grad=True),
        torch.randn(3, 8, 8, 8, dtype=torch.float64, requires_grad=True),
        torch.randn(3, 4, *size, dtype=torch.float64, requires_grad=True),
    ]
    head = RepresentationHead(52, 6, 2).double()
    assert [takes_separable_path(f.shape, size, 6) for f in features] == [True, False, False]
    rows = torch.zeros(3 * 16 * 16, 6, dtype=torch.float64)
    chosen = torch.tensor([0, 15, 16 * 7 + 3, 300, rows.shape[0] - 1])  # corners and borders included
    rows[chosen] = torch.randn(len(chosen), 6, dtype=torch.float64)
    upstream = rows.reshape(3, *size, 6).movedim(-1, 1)
    wrt = features + list(head.parameters())

    dense = head(features, size)
    expected = torch.autograd.grad((dense * upstream).sum(), wrt)
    fast = separable_representation(head, features, size, max_pixels)
    torch.testing.assert_close(fast, dense)
    for a, b in zip(torch.autograd.grad((fast * upstream).sum(), wrt), expected):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(fast_representation(head, features, size, 10), dense)


def test_poly_schedule_follows_the_formula_and_round_trips():
    config = load_config("cpu-demo", ["schedule.p2.iterations=10", "schedule.p2.lr=0.02"])
    model = build_model(config, 3)
    optimizer = build_optimizer(model, "p2", config.schedule.p2)
    scheduler = poly_schedule(optimizer, config.schedule.p2)
    lrs = []
    for _ in range(12):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:10] == pytest.approx([0.02 * (1 - t / 10) ** 0.9 for t in range(10)])
    assert lrs[10:] == [0.0, 0.0]
    restored = poly_schedule(build_optimizer(model, "p2", config.schedule.p2), config.schedule.p2)
    restored.load_state_dict(scheduler.state_dict())
    assert restored.last_epoch == scheduler.last_epoch
    assert PolyDecay(4, 2.0)(1) == pytest.approx(0.5625)
    trainable = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in trainable for p in model.teacher.parameters())
    assert not any(id(p) in trainable for p in model.representation_head.parameters())


def test_3d_p2_and_ft_steps_run_on_tiny_patches():
    config = load_config("cpu-demo", [
        "train.num_workers=1", "data.dims=3", "data.patch_size=[16, 16, 16]",
        "model.widths=[2, 4, 4, 8, 8]", "model.cut_size=8", "model.cut_stride=4", "model.local_pooling=2",
        "model.global_hidden=16", "model.global_dim=16", "model.representation_dim=8",
        "ft.num_queries=16", "ft.num_negatives=16", "distill.jitter_range=[0.98, 1.02]",
    ])
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 1, 16, 16, 16, generator=g)
    labels = (images[:, 0] > 0).long()
    p2 = build_state(config, 2, "cpu", "p2")
    assert p2.local_bank.keys.shape[1] == 27  # 3 windows of 8 (stride 4, last included) per axis
    out = p2_step(p2, {"image": images, "label": labels, "labelled": torch.tensor([1, 1, 0, 0]).bool()}, config.distill)
    assert all(torch.isfinite(v) for v in out.values())
    ft = build_state(config, 2, "cpu", "ft")
    out = ft_step(ft, {"image_l": images[:2], "label_l": labels[:2], "image_u": images[2:]}, config.ft)
    assert all(torch.isfinite(v) for v in out.values())


def test_banks_hold_bank_batches_global_batches_unless_a_size_is_given(monkeypatch):
    """K as training sizes the banks (``train.state``): ``distill.bank_batches`` × the global
    pretraining batch, which grows with the world size; ``distill.bank_size`` fixes K instead."""
    import action_ray.train.state as state_module

    monkeypatch.setattr(state_module, "world_size", lambda: 4)
    config = load_config("cpu-demo", ["data.pretrain_labelled_batch=3"])  # 3 + 2 slices per worker
    p2 = build_state(config, 3, "cpu", "p2", rank=0)
    k = 6 * (3 + 2) * 4
    assert p2.global_bank.keys.shape == (k, p2.model.global_dim)
    assert p2.local_bank.keys.shape == (k, 36, p2.model.local_dim)  # 6 x 6 windows of 16 on 64² slices
    fixed = build_state(load_config("cpu-demo", ["distill.bank_size=100"]), 3, "cpu", "p1", rank=0)
    assert fixed.global_bank.keys.shape == (100, fixed.model.global_dim) and fixed.local_bank is None


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("ACTION_RAY_TEST_COMPILE") != "1",
    reason="torch.compile of the UNet forwards takes 5-10 min on a shared 2-core machine; "
    "set ACTION_RAY_TEST_COMPILE=1 to run",
)
def test_compiled_forwards_give_the_eager_losses(monkeypatch):
    import torch._inductor.config as inductor_config

    overrides = ["train.num_workers=1", "data.slice_size=32", "model.widths=[4, 8, 8, 16, 16]"]
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 1, 32, 32, generator=g)
    labels = (images[:, 0] * 3).long().clamp(max=2)
    batch = {"image": images, "label": labels, "labelled": torch.tensor([1, 1, 0, 0]).bool()}
    losses = []
    # compiled dropout would otherwise draw from inductor's own RNG, not torch's
    monkeypatch.setattr(inductor_config, "fallback_random", True)
    for compile_flag in ("false", "true"):
        config = load_config("cpu-demo", [*overrides, f"train.compile={compile_flag}"])
        state = build_state(config, 3, "cpu", "p2")
        without_dropout(state.model)  # compiled kernels may draw the masks in another order
        losses.append(p2_step(state, batch, config.distill))
    for key in losses[0]:
        torch.testing.assert_close(losses[1][key], losses[0][key], rtol=1e-4, atol=1e-5)


def test_bench_step_prints_a_table_with_ratios(capsys):
    from action_ray.bench import step as bench_step

    parser = argparse.ArgumentParser()
    bench_step.configure(parser)
    args = parser.parse_args(["--size", "32", "--batch", "2", "--steps", "1", "--warmup", "0",
                              "--stages", "p1,supervised", "--threads", "1"])
    assert bench_step.run(args) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in (["p1"], ["supervised"])}
    assert set(rows) == {"p1", "supervised"}
    for fields in rows.values():
        step_ms, floor_ms, ratio = map(float, fields[2:5])
        assert step_ms > 0 and floor_ms > 0 and ratio == pytest.approx(step_ms / floor_ms, rel=0.05)
    with pytest.raises(Exception, match="unknown"):
        bench_step.run(parser.parse_args(["--stages", "p3"]))


@pytest.mark.parametrize("stage", ["p2", "ft"])
def test_channels_last_gives_the_same_losses(stage):
    from test_steps import SMALL_MODEL, ft_batch, pretrain_batch

    results = []
    for flag in ("false", "true"):
        config = load_config("cpu-demo", ["train.num_workers=1", "data.slice_size=32", *SMALL_MODEL,
                                           f"train.channels_last={flag}"])
        state = build_state(config, 3, "cpu", stage)
        without_dropout(state.model)  # bernoulli fills in memory order: the masks would differ
        step, batch = (p2_step, pretrain_batch()) if stage == "p2" else (ft_step, ft_batch())
        section = config.distill if stage == "p2" else config.ft
        results.append([step(state, batch, section) for _ in range(2)])
    # step 1 sees identical weights; step 2 follows an optimiser step whose gradients differ by
    # the summation order of channels-last convolutions, and the trained teacher heads
    # (teacher_head=grad) scale that by 1/T_t = 100 in the sharp teacher softmax
    for step, (eager, last) in enumerate(zip(*results), start=1):
        for key in eager:
            rtol, atol = (1e-4, 1e-5) if step == 1 else (1e-3, 1e-4)
            torch.testing.assert_close(last[key], eager[key], rtol=rtol, atol=atol, msg=f"step {step} {key}")


def _two_rank_worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    from test_steps import SMALL_MODEL, synthetic_images

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        config = load_config("cpu-demo", ["train.num_workers=2", "data.slice_size=32", *SMALL_MODEL,
                                           "ft.anco_negatives=bank"])
        state = build_state(config, 3, "cpu", "p2")
        for i in range(2):  # every rank gets different images
            images, labels = synthetic_images(4, seed=10 * rank + i)
            p2_step(state, {"image": images, "label": labels, "labelled": torch.tensor([1, 1, 0, 0]).bool()}, config.distill)
        p2 = {"model": state.model.state_dict(), "global": state.global_bank.keys, "local": state.local_bank.keys}
        from action_ray.train.state import handoff_p2_to_ft

        state = handoff_p2_to_ft(state)
        for i in range(2):
            images, labels = synthetic_images(4, seed=100 + 10 * rank + i)
            ft_step(state, {"image_l": images[:2], "label_l": labels[:2], "image_u": images[2:]}, config.ft)
        ft = {"model": state.model.state_dict(), "pixel": state.pixel_bank.keys, "filled": state.pixel_bank.filled}
        torch.save({"p2": p2, "ft": ft}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_keep_identical_models_and_banks(tmp_path):
    """Different data per rank, yet after every step the replicas agree: gradients are averaged
    and every bank enqueues the all-gathered keys of both ranks."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_two_rank_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for stage in ("p2", "ft"):
        a, b = ranks[0][stage], ranks[1][stage]
        for name, value in a["model"].items():
            if name.endswith("running_mean") or name.endswith("running_var") or name.endswith("num_batches_tracked"):
                continue  # BN statistics follow each rank's own data, as with DDP
            assert torch.equal(value, b["model"][name]), f"{stage}: {name} differs between ranks"
        for key in set(a) - {"model"}:
            assert torch.equal(a[key], b[key]), f"{stage}: bank {key} differs between ranks"
    # the global bank received 2 steps x 2 ranks x 4 keys; the pixel bank 2 ranks' samples per step
    assert int(ranks[0]["ft"]["filled"].min()) == 2 * 2 * 32


def test_zoom_setting_reaches_the_labelled_and_the_unlabelled_augmentation():
    config = load_config("cpu-demo", ["train.num_workers=1", "data.slice_size=32", "ft.scale_range=[0.7,1.4]",
                                       "ft.scale_p=0.25"])
    state = build_state(config, 4, "cpu", "ft")
    for augment in (state.weak_augment, state.strong_augment):
        assert augment.geo_aug and augment.geometric.scale_range == (0.7, 1.4)
        assert augment.geometric.scale_p == 0.25
    images = torch.zeros(16, 1, 32, 32)
    images[..., 12:20, 12:20] = 1.0
    labels = (images[:, 0] > 0).long()
    _, zoomed = state.weak_augment(images, labels, state.generator)
    areas = zoomed.sum(dim=(1, 2)).float() / 64  # a rotation alone keeps the area within ±15 %
    assert areas.max() > 1.3 and areas.min() < 0.75  # some magnified, some shrunk
