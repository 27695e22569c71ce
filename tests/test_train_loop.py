"""The per-worker loop without Ray: checkpoint round trips, batch layout, exact resume.

`run_stages` is driven with an in-process batch source and a reporter that keeps the
checkpoints, so the resume logic (stage, step, RNG streams, data position, hand-offs) is
checked in seconds; the Ray-level tests (test_train_ray.py) repeat the key one end to end.
"""

from __future__ import annotations

import copy
import os
import random

import numpy as np
import pytest
import torch

from action_ray.config import load_config
from action_ray.data.labels import NO_LABEL_UINT8
from action_ray.errors import ConfigError
from action_ray.losses import IGNORE_LABEL
from action_ray.runs.checkpoint import (
    Checkpoint,
    DataPosition,
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from action_ray.runs.layout import META_FILE
from action_ray.train.loop import LoopSettings, Reporter, compose_batch, run_stages, stage_batch_sizes

SIZE = 32
TINY = [
    "data.slice_size=32", "model.cut_size=16", "model.cut_stride=8", "model.local_pooling=4",
    "data.labelled_patients=1", "ft.num_queries=8", "ft.num_negatives=16",
    "train.report_every=1", "train.checkpoint_every=2", "train.deterministic=true",
]


def tiny_config(iterations: int = 3, *extra: str):
    overrides = TINY + [f"schedule.{s}.iterations={iterations}" for s in ("p1", "p2", "ft")] + list(extra)
    return load_config("cpu-demo", overrides)


def fake_batches(config, epoch_batches: int = 2):
    """A deterministic BatchSource: batch content depends only on (stage, epoch, index)."""

    def rows(n: int, key: tuple, with_label: bool) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(hash(key) % 2**31)
        out = {"image": torch.rand((n, 1, SIZE, SIZE), generator=g)}
        if with_label:
            out["label"] = torch.randint(0, 4, (n, SIZE, SIZE), generator=g, dtype=torch.uint8)
        return out

    def batches(stage: str, start: DataPosition):
        n_lab, n_unl = stage_batch_sizes(config, stage)
        epoch, skip = start.epoch, start.batches
        while True:
            for index in range(skip, epoch_batches):
                parts = {"labelled": rows(n_lab, (stage, epoch, index, "l"), True)}
                if n_unl:
                    parts["unlabelled"] = rows(n_unl, (stage, epoch, index, "u"), False)
                yield DataPosition(epoch, index + 1), parts
            epoch, skip = epoch + 1, 0

    return batches


class KeepingReporter(Reporter):
    def __init__(self):
        super().__init__(0)
        self.rows: list[dict] = []
        self.checkpoints: list[Checkpoint] = []

    def report(self, metrics, history, checkpoint):
        self.rows.append(metrics)
        if checkpoint is not None:  # a snapshot: the live state keeps training after this
            self.checkpoints.append(copy.deepcopy(checkpoint))


def settings_for(config, stop_after_steps=None) -> LoopSettings:
    return LoopSettings(config=config.to_dict(), label_split="{}", run_dir="unused", num_classes=4,
                        stop_after_steps=stop_after_steps, write_pid=False)


def trajectory(rows: list[dict]) -> list[tuple]:
    return [(r["stage"], r["step"], r["loss"]) for r in rows]


def test_checkpoint_round_trip_and_incomplete_directory(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3), "step": 7}
    ckpt = Checkpoint(stage="p2", step=7, train_state=state, rank_rng=[{"x": 1}, {"x": 2}],
                      data_position=DataPosition(3, 5), config={"method": "action"}, label_split="{}",
                      metrics=[{"loss": 1.5}], stage_done=False)
    save_checkpoint(str(tmp_path / "c"), ckpt)
    back = load_checkpoint(str(tmp_path / "c"))
    assert back.stage == "p2" and back.step == 7 and back.data_position == DataPosition(3, 5)
    assert torch.equal(back.train_state["w"], state["w"]) and back.rank_rng[1] == {"x": 2}
    assert not [n for n in os.listdir(tmp_path / "c") if ".tmp" in n]  # no temporary leftovers
    os.remove(tmp_path / "c" / META_FILE)  # as if the writer died before the marker
    with pytest.raises(ConfigError, match="not a complete action-ray checkpoint"):
        load_checkpoint(str(tmp_path / "c"))


def test_rng_capture_restores_every_stream():
    saved = capture_rng()
    first = (random.random(), np.random.rand(), torch.rand(2))
    restore_rng(saved)
    again = (random.random(), np.random.rand(), torch.rand(2))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])


def test_compose_batch_layouts():
    lab = {"image": torch.zeros(2, 1, 8, 8), "label": torch.ones(2, 8, 8, dtype=torch.uint8)}
    unl = {"image": torch.ones(3, 1, 8, 8)}
    pre = compose_batch("p1", {"labelled": lab, "unlabelled": unl})
    assert pre["image"].shape == (5, 1, 8, 8) and pre["label"].dtype == torch.long
    assert pre["labelled"].tolist() == [True, True, False, False, False]
    assert pre["label"][2:].eq(0).all() and pre["label"][:2].eq(1).all()
    ft = compose_batch("ft", {"labelled": lab, "unlabelled": unl})
    assert set(ft) == {"image_l", "label_l", "image_u"} and ft["image_u"].shape[0] == 3
    # a stream row without a label (uint8 255) reaches the losses as IGNORE_LABEL, in both layouts
    lab["label"][1] = NO_LABEL_UINT8
    pre = compose_batch("p2", {"labelled": lab, "unlabelled": unl})
    ft = compose_batch("ft", {"labelled": lab})
    for labels in (pre["label"][:2], ft["label_l"]):
        assert labels[0].eq(1).all() and labels[1].eq(IGNORE_LABEL).all() and labels.dtype == torch.long
    assert lab["label"][1].eq(NO_LABEL_UINT8).all()  # the stream batch itself is left as it was


ITERATIONS = {"p1": 2, "p2": 4, "ft": 2}


@pytest.fixture(scope="module")
def full_run():
    """An uninterrupted run of all three stages: (config, reporter with rows and checkpoints)."""
    config = tiny_config(1, *[f"schedule.{s}.iterations={n}" for s, n in ITERATIONS.items()])
    full = KeepingReporter()
    summary = run_stages(config, settings_for(config), fake_batches(config, 3), full, torch.device("cpu"),
                         log=lambda _: None)
    assert summary == {"stage": "ft", "step": 2, "interrupted": False}
    assert [r["stage"] for r in full.rows] == ["p1"] * 2 + ["p2"] * 4 + ["ft"] * 2
    return config, full


def test_interrupted_and_resumed_run_repeats_the_uninterrupted_losses(full_run):
    """Contract 5 in-process: stop mid-P2 (one step after a checkpoint, mid-epoch), resume from
    the last checkpoint, finish P2 and FT: the same losses, bit for bit."""
    config, full = full_run
    first = KeepingReporter()
    stopped = run_stages(config, settings_for(config, stop_after_steps=5), fake_batches(config, 3), first,
                         torch.device("cpu"), log=lambda _: None)
    assert stopped["interrupted"] and (stopped["stage"], stopped["step"]) == ("p2", 3)
    last = first.checkpoints[-1]
    assert (last.stage, last.step, last.stage_done) == ("p2", 2, False)
    assert last.data_position == DataPosition(0, 2)  # mid-epoch: the resumed stream must skip
    second = KeepingReporter()
    run_stages(config, settings_for(config), fake_batches(config, 3), second, torch.device("cpu"),
               resume=last, log=lambda _: None)
    resumed = trajectory(first.rows[: len(last.metrics)]) + trajectory(second.rows)
    assert resumed == trajectory(full.rows)  # bit-identical losses, every stage


def test_resume_from_a_stage_end_hands_over_to_the_next_stage(full_run):
    config, full = full_run
    p2_end = next(c for c in full.checkpoints if c.stage == "p2" and c.stage_done)
    tail = KeepingReporter()
    run_stages(config, settings_for(config), fake_batches(config, 3), tail, torch.device("cpu"),
               resume=p2_end, log=lambda _: None)
    assert trajectory(tail.rows) == trajectory(full.rows)[6:]


def test_ray_trains_per_report_info_line_is_silenced_in_the_worker():
    """The module that logs "Reporting training result N" must still exist where we look for it
    (a Ray upgrade that moves it would bring back a line per report)."""
    import importlib.util
    import logging

    from action_ray.train.loop import RAY_TRAIN_REPORT_MODULE, quiet_report_lines

    origin = importlib.util.find_spec(RAY_TRAIN_REPORT_MODULE).origin
    with open(origin) as handle:
        assert "Reporting training result" in handle.read()
    logger = logging.getLogger(origin)
    before = logger.level
    try:
        quiet_report_lines()
        assert not logger.isEnabledFor(logging.INFO) and logger.isEnabledFor(logging.WARNING)
    finally:
        logger.setLevel(before)
