"""The ACTION model family: UNet shapes, heads, patch extraction, EMA teacher, stage parameters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from action_ray.config import load_config
from action_ray.errors import ConfigError
from action_ray.model import (
    MODEL_PRESETS,
    ActionModel,
    UNet2d,
    UNet3d,
    build_unet,
    ema_buffers_,
    ema_update_,
    embed_local_patches,
    extract_local_patches,
    make_ema_copy,
    patch_starts,
    pooled_local_patches,
)
from action_ray.train.state import build_model, build_state, handoff_p1_to_p2, handoff_p2_to_ft


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def model_from_config(num_classes: int, preset: str | None = "cpu-demo", *overrides: str) -> ActionModel:
    """The `ActionModel` of a packaged config, built the way training builds it
    (``train.state.build_model``); ``preset=None`` is the paper's default config."""
    return build_model(load_config(preset, list(overrides)), num_classes)


def test_paper_unet2d_shapes_and_feature_channels():
    net = UNet2d(in_channels=1, num_classes=4)
    out = net(torch.randn(2, 1, 64, 48))
    assert out.logits.shape == (2, 4, 64, 48)
    assert out.bottleneck.shape == (2, 256, 4, 3)
    assert [f.shape[1] for f in out.features] == [256, 128, 64, 32, 16]
    assert [tuple(f.shape[2:]) for f in out.features] == [(4, 3), (8, 6), (16, 12), (32, 24), (64, 48)]
    assert sum(f.shape[1] for f in out.features) == 496 == net.feature_channels
    assert out.features[0] is out.bottleneck


def test_paper_unet2d_layout_matches_published_parameter_count():
    # conv/BN/transposed-conv/out-conv of the SSL4MIS UNet at [16..256], 4 classes
    def block(cin, cout):
        return cin * cout * 9 + cout + 2 * cout + cout * cout * 9 + cout + 2 * cout

    widths = [16, 32, 64, 128, 256]
    enc = block(1, 16) + sum(block(a, b) for a, b in zip(widths, widths[1:]))
    dec = sum(d * s * 4 + s + block(2 * s, s) for d, s in zip(widths[::-1], widths[::-1][1:]))
    out = 16 * 4 * 9 + 4
    assert sum(p.numel() for p in UNet2d().parameters()) == enc + dec + out


@pytest.mark.parametrize("preset", sorted(MODEL_PRESETS))
@pytest.mark.parametrize("dims", [2, 3])
def test_presets_build_2d_and_3d(preset, dims):
    net = build_unet(preset, num_classes=3, dims=dims)
    size = (32,) * dims if dims == 2 else (32, 16, 16)
    out = net(torch.randn(1, 1, *size))
    widths = MODEL_PRESETS[preset].widths
    assert out.logits.shape == (1, 3, *size)
    assert out.bottleneck.shape == (1, widths[-1], *(s // 16 for s in size))
    assert sum(f.shape[1] for f in out.features) == sum(widths)
    assert tuple(out.features[-1].shape[2:]) == size


def test_unet3d_paper_interface():
    net = UNet3d(num_classes=2, widths=(4, 8, 16, 32, 64))
    assert net.dims == 3 and UNet2d().dims == 2
    with pytest.raises(ValueError, match="UNet3d is 3-D"):
        UNet3d(dims=2)
    out = net(torch.randn(1, 1, 32, 32, 16))
    assert out.logits.shape == (1, 2, 32, 32, 16)
    assert out.bottleneck.shape == (1, 64, 2, 2, 1)


def test_bad_input_sizes_are_named():
    net = build_unet("cpu", num_classes=4)
    with pytest.raises(ValueError, match=r"\(1, 1, 40, 64\).*divisible by 16"):
        net(torch.randn(1, 1, 40, 64))
    with pytest.raises(ValueError, match="expected input"):
        net(torch.randn(1, 3, 32, 32))
    with pytest.raises(ConfigError, match="unknown model preset 'huge'"):
        build_unet("huge", num_classes=4)
    with pytest.raises(ValueError, match="pass dropout"):
        build_unet((8, 16, 32), num_classes=4)


def test_channels_last_matches_contiguous():
    net = build_unet("cpu", num_classes=4).eval()
    x = torch.randn(2, 1, 32, 32)
    ref = net(x)
    net_cl = net.to(memory_format=torch.channels_last)
    out = net_cl(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-4, atol=1e-5)
    model = model_from_config(4).to(memory_format=torch.channels_last)
    o = model.student(x.to(memory_format=torch.channels_last))
    rep = model.representation_head(o.features, x.shape[2:])
    z = model.global_q(o.bottleneck)
    u = embed_local_patches(extract_local_patches(o.logits, 16, 8), model.local_q, model.local_predictor)
    assert rep.shape == (2, 64, 32, 32) and z.shape == (2, 128) and u.shape[1:] == (2, 4 * 16)


def test_head_shapes_paper_2d_and_3d():
    model = model_from_config(4, None)
    out = model.student(torch.randn(2, 1, 32, 32))
    assert model.global_predictor(model.global_q(out.bottleneck)).shape == (2, 512)
    assert model.global_k(out.bottleneck).shape == (2, 512)
    patches = extract_local_patches(out.logits, cut=16, stride=8)
    assert model.local_q(patches[0]).shape == (2, 4, 8, 8)
    assert embed_local_patches(patches, model.local_k).shape == (4, 2, 256) and model.local_dim == 256
    rep = model.representation_head([f[:1] for f in out.features], (32, 32))
    assert rep.shape == (1, 512, 32, 32)
    assert model.representation_head.conv1.bias is None

    model3 = model_from_config(2, "la-3d").eval()  # eval: 1-voxel bottleneck
    out3 = model3.student(torch.randn(1, 1, 16, 16, 16))
    assert model3.global_q(out3.bottleneck).shape == (1, 128)
    cubes = extract_local_patches(out3.logits, cut=8, stride=4)
    assert embed_local_patches(cubes, model3.local_q, model3.local_predictor).shape == (3 * 3 * 3, 1, 128)
    assert model3.representation_head(out3.features, (16, 16, 16)).shape == (1, 128, 16, 16, 16)


def test_heads_are_purely_linear():
    model = model_from_config(4)
    x = torch.randn(3, 128, 4, 4)
    head = model.global_q
    # affine maps: f(2x - y) = 2 f(x) - f(y); f(3p) - f(0) = 3 (f(p) - f(0))
    y = torch.randn_like(x)
    torch.testing.assert_close(head(2 * x - y), 2 * head(x) - head(y), rtol=1e-4, atol=1e-4)
    p = torch.randn(5, 4, 16, 16)
    for lin in (model.local_q, model.local_predictor):
        f0 = lin(torch.zeros_like(p))
        torch.testing.assert_close(lin(3 * p) - f0, 3 * (lin(p) - f0), rtol=1e-4, atol=1e-4)


def _naive_patches(x, cut, stride, starts):
    out = []
    for r in starts[0]:
        for c in starts[1]:
            out.append(x[:, :, r : r + cut, c : c + cut])
    return torch.stack(out)


def test_patch_starts_follow_published_rules():
    assert list(patch_starts(256, 64, 32)) == [0, 32, 64, 96, 128, 160]
    assert list(patch_starts(64, 16, 8)) == [0, 8, 16, 24, 32, 40]
    assert list(patch_starts(112, 20, 10, include_last=True)) == list(range(0, 91, 10))
    assert list(patch_starts(80, 20, 10, include_last=True)) == list(range(0, 61, 10))
    with pytest.raises(ValueError, match="no local window"):
        patch_starts(16, 16, 8)


def test_extract_local_patches_matches_slicing_loop():
    x = torch.randn(2, 3, 256, 256)
    patches = extract_local_patches(x, cut=64, stride=32)
    assert patches.shape == (36, 2, 3, 64, 64)
    starts = list(range(0, 161, 32))
    torch.testing.assert_close(patches, _naive_patches(x, 64, 32, (starts, starts)), rtol=0, atol=0)
    # rows/cols 224..255 are never covered
    marked = torch.zeros(1, 1, 256, 256)
    marked[..., 224:, :] = 1
    marked[..., :, 224:] = 1
    assert extract_local_patches(marked, 64, 32).sum() == 0

    y = torch.randn(2, 4, 64, 48)
    got = extract_local_patches(y, cut=16, stride=8)
    want = _naive_patches(y, 16, 8, (range(0, 41, 8), range(0, 25, 8)))
    assert got.shape == (6 * 4, 2, 4, 16, 16)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_extract_local_patches_3d_matches_slicing_loop():
    x = torch.randn(1, 2, 30, 30, 20)
    got = extract_local_patches(x, cut=10, stride=5)  # 3-D: last start included
    want = torch.stack(
        [
            x[:, :, a : a + 10, b : b + 10, c : c + 10]
            for a in range(0, 21, 5)
            for b in range(0, 21, 5)
            for c in range(0, 11, 5)
        ]
    )
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize(
    "shape, cut, stride, pool",
    [((2, 4, 64, 64), 16, 8, 4), ((1, 4, 256, 256), 64, 32, 8), ((1, 2, 40, 40, 30), 20, 10, 4)],
)
def test_pooled_local_patches_equal_pooling_each_patch(shape, cut, stride, pool):
    x = torch.randn(shape)
    patches = extract_local_patches(x, cut, stride)
    flat = patches.flatten(0, 1)
    adaptive = F.adaptive_avg_pool2d if x.dim() == 4 else F.adaptive_avg_pool3d
    want = adaptive(flat, pool).reshape(*patches.shape[:3], *([pool] * (x.dim() - 2)))
    torch.testing.assert_close(pooled_local_patches(x, cut, stride, pool), want, rtol=1e-5, atol=1e-5)


def test_ema_update_matches_formula_and_leaves_buffers():
    student = build_unet("cpu", num_classes=4)
    teacher = make_ema_copy(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    teacher.train()(torch.randn(4, 1, 32, 32))  # give the teacher its own BN statistics
    t_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    s_params = dict(student.named_parameters())
    ema_update_(teacher, student, 0.9)
    param_names = set(s_params)
    for name, value in teacher.state_dict().items():
        if name in param_names:
            torch.testing.assert_close(value, 0.9 * t_before[name] + 0.1 * s_params[name].detach())
        else:  # BN running stats / counters untouched
            assert torch.equal(value, t_before[name]), name
    assert not any(p.requires_grad for p in teacher.parameters())
    with pytest.raises(ValueError, match="different parameters"):
        ema_update_(teacher, build_unet("paper", num_classes=4), 0.99)


def test_ema_buffers_averages_running_stats_and_copies_counters():
    student = build_unet("cpu", num_classes=4)
    teacher = make_ema_copy(student)
    student.train()(torch.randn(4, 1, 32, 32) * 3 + 2)  # student BN statistics move, teacher's do not
    t_before = {k: v.clone() for k, v in teacher.named_buffers()}
    s_buffers = dict(student.named_buffers())
    ema_buffers_(teacher, student, 0.9)
    changed = 0
    for name, value in teacher.named_buffers():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.9 * t_before[name] + 0.1 * s_buffers[name])
            changed += int(not torch.equal(value, t_before[name]))
        else:
            assert torch.equal(value, s_buffers[name]), name
    assert changed > 0, "the student's statistics must differ for the check to bite"
    with pytest.raises(ValueError, match="different buffers"):
        ema_buffers_(teacher, build_unet("paper", num_classes=4), 0.99)


def test_action_model_teacher_never_gets_grads_and_ema_heads_follow():
    model = model_from_config(4, "cpu-demo", "distill.teacher_head=ema")
    groups = model.param_groups("p2")
    opt = torch.optim.SGD(groups, lr=0.1)
    x = torch.randn(2, 1, 32, 32)
    out = model.student(x)
    with torch.no_grad():
        t_out = model.teacher(x)
    z_s = model.global_predictor(model.global_q(out.bottleneck))
    z_t = model.global_k(t_out.bottleneck)
    loss = (z_s - z_t).pow(2).mean() + out.logits.mean()
    loss.backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert all(p.grad is None for p in model.global_k.parameters())
    opt.step()
    k_before = [p.clone() for p in model.global_k.parameters()]
    q_now = [p.detach().clone() for p in model.global_q.parameters()]
    model.update_teacher(0.5)
    for kb, qn, k in zip(k_before, q_now, model.global_k.parameters()):
        torch.testing.assert_close(k, 0.5 * kb + 0.5 * qn)


def test_grad_mode_is_the_default_and_trains_k_heads_through_target():
    assert model_from_config(4).teacher_head == "grad"
    model = model_from_config(4, "cpu-demo", "distill.teacher_head=grad")
    names = {id(p) for p in model.param_groups("p1")[1]["params"]}
    assert all(id(p) in names for p in model.global_k.parameters())
    assert not any(id(p) in names for p in model.local_k.parameters())
    assert all(p.requires_grad for p in model.global_k.parameters())
    k_before = [p.clone() for p in model.global_k.parameters()]
    model.update_teacher(0.0)  # grad mode: k-heads are not EMA-updated
    assert all(torch.equal(a, b) for a, b in zip(k_before, model.global_k.parameters()))


def test_p1_freezes_decoder_through_an_sgd_step():
    model = model_from_config(4)
    groups = model.param_groups("p1")
    decoder_ids = {id(p) for p in model.student.decoder.parameters()}
    assert not any(id(p) in decoder_ids for g in groups for p in g["params"])
    decoder_before = [p.clone() for p in model.student.decoder.parameters()]
    encoder_before = [p.clone() for p in model.student.encoder.parameters()]
    opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=1e-4)
    out = model.student(torch.randn(2, 1, 32, 32))
    loss = model.global_predictor(model.global_q(out.bottleneck)).pow(2).mean() + out.logits.pow(2).mean()
    loss.backward()
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(decoder_before, model.student.decoder.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(encoder_before, model.student.encoder.parameters()))
    # later stages unfreeze it again; FT trains the representation head, not the global heads
    ft = model.param_groups("ft")
    ft_ids = {id(p) for g in ft for p in g["params"]}
    assert decoder_ids <= ft_ids
    assert {id(p) for p in model.representation_head.parameters()} <= ft_ids
    assert not any(id(p) in ft_ids for p in model.global_q.parameters())
    with pytest.raises(ValueError, match="stage must be one of"):
        model.param_groups("p3")


def test_action_model_state_dict_round_trip():
    a = model_from_config(4)
    a.update_teacher(0.5)
    a.teacher(torch.randn(2, 1, 32, 32))  # non-default BN buffers
    b = model_from_config(4)
    b.load_state_dict(a.state_dict())
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    prefixes = {k.split(".")[0] for k in sa}
    assert prefixes == {
        "student", "teacher", "global_q", "global_predictor", "global_k",
        "local_q", "local_predictor", "local_k", "representation_head",
    }
    x = torch.randn(1, 1, 32, 32)
    a.eval(), b.eval()
    torch.testing.assert_close(a.teacher(x).logits, b.teacher(x).logits, rtol=0, atol=0)


@pytest.mark.parametrize("teacher_head", ["ema", "grad"])
def test_hand_offs_reset_heads_and_copy_student(teacher_head):
    """The stage hand-offs of training (``train.state``): P1 -> P2 re-initialises the heads;
    P2 -> FT copies the student, parameters and BN statistics, into the teacher."""
    config = load_config("cpu-demo", [f"distill.teacher_head={teacher_head}", "train.num_workers=1"])
    p1 = build_state(config, 4, "cpu", "p1")
    model = p1.model
    before = model.global_q.fc1.weight.clone()
    p2 = handoff_p1_to_p2(p1)
    assert not torch.equal(before, model.global_q.fc1.weight)
    # ema: the k-heads restart as copies of the q-heads; grad: they get their own initialisation
    same = torch.equal(model.global_k.fc1.weight, model.global_q.fc1.weight)
    assert same == (teacher_head == "ema")
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(1.0)
    model.student.train()(torch.randn(2, 1, 32, 32))  # the student's BN statistics move, the teacher's do not
    teacher = model.teacher.state_dict()
    assert not all(torch.equal(teacher[name], value) for name, value in model.student.state_dict().items())
    handoff_p2_to_ft(p2)
    teacher = model.teacher.state_dict()
    assert all(torch.equal(teacher[name], value) for name, value in model.student.state_dict().items())
    assert isinstance(model, ActionModel)


def test_encode_gives_the_forward_bottleneck_without_the_decoder():
    net = build_unet("cpu", num_classes=4).eval()
    x = torch.randn(2, 1, 32, 32)
    maps = net.encode(x)
    assert [m.shape[1] for m in maps] == [8, 16, 32, 64, 128]
    torch.testing.assert_close(maps[-1], net(x).bottleneck, rtol=0, atol=0)
