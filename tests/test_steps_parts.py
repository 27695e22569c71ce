"""Parts around the step functions: the sparse-gradient representation head, the optimiser and
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
from action_ray.train.steps.representation import sparse_grad_representation
from test_steps import one_torch_thread  # noqa: F401  (autouse fixture: one torch thread)


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
    assert torch.equal(sparse, dense)
    got = torch.autograd.grad((sparse * upstream).sum(), wrt)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
    # too small a budget drops pixels: the gradient is then (knowingly) incomplete
    short = torch.autograd.grad((sparse_grad_representation(head, features, size, 3) * upstream).sum(), wrt)
    assert not torch.allclose(short[0], expected[0])


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
    out = p2_step(p2, {"image": images, "label": labels, "labelled": torch.tensor([1, 1, 0, 0]).bool()}, config)
    assert all(torch.isfinite(v) for v in out.values())
    ft = build_state(config, 2, "cpu", "ft")
    out = ft_step(ft, {"image_l": images[:2], "label_l": labels[:2], "image_u": images[2:]}, config)
    assert all(torch.isfinite(v) for v in out.values())


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("ACTION_RAY_TEST_COMPILE") != "1",
    reason="torch.compile of the UNet forwards took > 9 min on the shared 2-core machine; "
    "set ACTION_RAY_TEST_COMPILE=1 to run",
)
def test_compiled_forwards_give_the_eager_losses():
    overrides = ["train.num_workers=1", "data.slice_size=32", "model.widths=[4, 8, 8, 16, 16]"]
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 1, 32, 32, generator=g)
    labels = (images[:, 0] * 3).long().clamp(max=2)
    batch = {"image": images, "label": labels, "labelled": torch.tensor([1, 1, 0, 0]).bool()}
    losses = []
    for compile_flag in ("false", "true"):
        config = load_config("cpu-demo", [*overrides, f"train.compile={compile_flag}"])
        state = build_state(config, 3, "cpu", "p2")
        losses.append(p2_step(state, batch, config))
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
