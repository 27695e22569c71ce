"""The shared training recipe: foreground-centred crops, AdamW/one-cycle, pseudo-label ramp,
and the report-step diagnostics (gradient alignment, pseudo-label summary)."""

from __future__ import annotations

import math

import pytest
import torch

from action_ray.augment.crop import crop_origins, random_crops, take_windows
from action_ray.config import load_config
from action_ray.errors import ConfigError
from action_ray.losses import IGNORE_LABEL
from action_ray.train.steps.diagnostics import gradient_alignment, is_report_step, pseudo_label_summary
from action_ray.train.steps.ft import pseudo_label_weight

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_windows_are_the_pixels_at_their_origin():
    images = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    labels = images[:, 0].long()
    y0, x0 = torch.tensor([0, 3]), torch.tensor([2, 4])
    crops = take_windows(images, y0, x0, 4)
    assert crops.shape == (2, 1, 4, 4)
    assert torch.equal(crops[0, 0], images[0, 0, 0:4, 2:6])
    assert torch.equal(crops[1, 0], images[1, 0, 3:7, 4:8])
    assert torch.equal(take_windows(labels, y0, x0, 4), crops[:, 0].long())


def test_foreground_crops_contain_the_foreground_and_uniform_ones_spread():
    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(64, 128, 128, dtype=torch.long)
    labels[:, 100:104, 5:9] = 2  # a small structure in a corner
    images = labels[:, None].float()
    crops, crop_labels = random_crops(images, labels, 32, foreground_p=1.0, generator=g)
    assert crops.shape == (64, 1, 32, 32) and crop_labels.shape == (64, 32, 32)
    assert bool((crop_labels.flatten(1) > 0).any(dim=1).all())  # every window holds the structure
    assert torch.equal(crops[:, 0].long(), crop_labels)          # image and label cut together
    _, uniform = random_crops(images, labels, 32, foreground_p=0.0, generator=g)
    hits = (uniform.flatten(1) > 0).any(dim=1).float().mean()
    assert hits < 0.3  # the structure is in few uniform windows


def test_crop_origins_fall_back_to_uniform_without_foreground():
    g = torch.Generator().manual_seed(1)
    labels = torch.zeros(200, 64, 64, dtype=torch.long)
    labels[:, 0, 0] = IGNORE_LABEL  # a pixel without supervision is not foreground
    y0, x0 = crop_origins(labels, 200, 64, 64, 16, 1.0, g)
    assert int(y0.min()) >= 0 and int(y0.max()) <= 48 and int(x0.max()) <= 48
    assert len(set(y0.tolist())) > 20  # spread, not pinned to the ignore pixel


def test_crop_config_is_checked_and_sizes_the_local_branch():
    config = load_config("cpu-demo", ["data.slice_size=128", "data.crop_size=64"])
    assert config.data.train_side == 64
    with pytest.raises(ConfigError, match="crop_size"):
        load_config("cpu-demo", ["data.slice_size=64", "data.crop_size=80"])
    from action_ray.train.state import num_local_patches

    assert num_local_patches(config) == 36  # 64² crops, cut 16 stride 8: 6 x 6 windows


def test_adamw_onecycle_warms_up_then_anneals():
    from action_ray.model import ActionModel, build_unet
    from action_ray.train.optim import build_optimizer, stage_schedule

    config = load_config("cpu-demo", ["schedule.ft.optimizer=adamw", "schedule.ft.lr_schedule=onecycle",
                                      "schedule.ft.lr=0.004", "schedule.ft.iterations=100"])
    model = ActionModel(build_unet("cpu", 2), global_hidden=8, global_dim=8, representation_dim=8)
    optimizer = build_optimizer(model, "ft", config.schedule.ft)
    assert isinstance(optimizer, torch.optim.AdamW)
    schedule = stage_schedule(optimizer, config.schedule.ft)
    lrs = []
    for _ in range(100):
        optimizer.step()
        schedule.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    peak = max(range(100), key=lambda i: lrs[i])
    assert 5 <= peak <= 15 and math.isclose(lrs[peak], 0.004, rel_tol=0.05)
    assert lrs[-1] < 1e-5
    state = schedule.state_dict()
    restored = stage_schedule(build_optimizer(model, "ft", config.schedule.ft), config.schedule.ft)
    restored.load_state_dict(state)
    assert restored.last_epoch == 100


def test_pseudo_label_ramp():
    ft = load_config("cpu-demo", ["ft.unsup_rampup=0.4"]).ft
    assert pseudo_label_weight(0, 1000, ft) == pytest.approx(math.exp(-5))
    assert pseudo_label_weight(200, 1000, ft) == pytest.approx(math.exp(-5 * 0.25))
    assert pseudo_label_weight(400, 1000, ft) == pytest.approx(1.0)
    published = load_config("cpu-demo", []).ft
    assert pseudo_label_weight(0, 1000, published) == 1.0


def test_gradient_alignment_measures_ratio_and_direction():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    v = torch.nn.Parameter(torch.tensor([3.0]))
    sup = (w * torch.tensor([1.0, 0.0])).sum()            # ∇_w = (1, 0)
    same = 3 * sup                                        # 3x, same direction
    against = (w * torch.tensor([-2.0, 0.0])).sum()       # 2x, opposite
    across = (w * torch.tensor([0.0, 5.0])).sum() + v.sum()  # 5x, orthogonal on w
    out = gradient_alignment({"sup": sup, "same": same, "against": against, "across": across}, "sup",
                             {"w": [w], "v": [v]})
    assert out["grad_ratio/w/same"] == pytest.approx(3.0) and out["grad_cos/w/same"] == pytest.approx(1.0)
    assert out["grad_ratio/w/against"] == pytest.approx(2.0) and out["grad_cos/w/against"] == pytest.approx(-1.0)
    assert out["grad_cos/w/across"] == pytest.approx(0.0)
    assert math.isnan(out["grad_ratio/v/across"])  # no supervised gradient on v
    (sup + same).backward()  # the graph is still usable by the step's own backward
    assert w.grad is not None


def test_pseudo_label_summary_and_report_steps():
    labels = torch.tensor([[0, 0, 1, 2]])
    confidence = torch.tensor([[0.99, 0.5, 0.98, 0.2]])
    out = pseudo_label_summary(labels, confidence, 0.97, 3)
    assert out["pseudo_fraction/0"] == 0.5 and out["pseudo_confident/0"] == 0.5
    assert out["pseudo_fraction/1"] == 0.25 and out["pseudo_confident/1"] == 1.0
    assert out["pseudo_confident/2"] == 0.0 and out["pseudo_foreground"] == 0.5
    assert [s for s in range(30) if is_report_step(s, 10, 25)] == [9, 19, 24, 25, 26, 27, 28, 29]
