"""Experiment tracking: where each backend writes, what a worker logs, what validation adds."""

from __future__ import annotations

import glob
import os
import struct

import pytest

from action_ray.config import load_config
from action_ray.errors import ConfigError
from action_ray.runs.layout import TRACKING_FILE
from action_ray.train.tracking import (
    log_validation,
    open_worker_tracker,
    read_tracking,
    tracking_target,
    tracking_target_of,
)


def tensorboard_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files of ``logdir`` (TFRecord framing, tensorboardX's protobufs)."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        with open(path, "rb") as handle:
            data = handle.read()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, round(value.simple_value, 6)))
    return scalars


def test_targets_default_next_to_the_runs_and_remote_runs_need_an_explicit_one(tmp_path):
    assert tracking_target("mlflow", None, str(tmp_path), "unused") == f"file://{tmp_path}/mlruns"
    assert tracking_target("mlflow", "http://mlflow:5000", "s3://b/runs", "s3://b/runs/x") == "http://mlflow:5000"
    assert tracking_target("tensorboard", None, str(tmp_path), f"{tmp_path}/r") == f"{tmp_path}/r/tensorboard"
    with pytest.raises(ConfigError, match="tracking_uri"):
        tracking_target("mlflow", None, "s3://b/runs", "s3://b/runs/x")
    with pytest.raises(ConfigError, match="local folder"):
        tracking_target("tensorboard", None, "s3://b/runs", "s3://b/runs/x")
    assert tracking_target_of(load_config("cpu-demo", []), "r") is None  # none by default
    with pytest.raises(ConfigError, match="tracking"):
        load_config("cpu-demo", ["train.tracking=wandb"])


def test_tensorboard_gets_the_losses_per_stage_and_the_validation_scores(tmp_path):
    run_dir = str(tmp_path / "runs" / "r1")
    config = load_config("cpu-demo", ["train.tracking=tensorboard", f"train.storage_path={tmp_path}/runs"])
    target = tracking_target_of(config, run_dir)
    assert open_worker_tracker("tensorboard", target, config, run_dir, rank=1).backend == "none"  # rank 0 only
    tracker = open_worker_tracker("tensorboard", target, config, run_dir, rank=0)
    for step, loss in ((1, 0.5), (2, 0.25)):
        tracker.log({"stage": "ft", "step": step, "loss": loss, "lr": 0.01, "replicas_identical": True,
                     "nodes": "abc", "time": 1.0, "epoch": 0})
    tracker.close()
    assert read_tracking(run_dir) == {"backend": "tensorboard", "logdir": target}
    log_validation(run_dir, target, {"ft_step": 2, "val_dice": 0.75, "val_dice_lv": 0.5, "checkpoint_path": "x"})
    scalars = tensorboard_scalars(target)
    assert scalars == {"ft/loss": [(1, 0.5), (2, 0.25)], "ft/lr": [(1, 0.01), (2, 0.01)],
                       "val/dice": [(2, 0.75)], "val/dice_lv": [(2, 0.5)]}


def test_a_run_without_tracking_ignores_validation_logging(tmp_path):
    log_validation(str(tmp_path), None, {"ft_step": 2, "val_dice": 0.5})
    assert not os.path.exists(tmp_path / TRACKING_FILE)
    assert read_tracking(str(tmp_path)) is None


def test_a_failing_tracker_is_switched_off_instead_of_stopping_training(capsys):
    from action_ray.train.tracking import WorkerTracker

    class Broken:
        def log_metrics(self, values, step):
            raise ConnectionError("tracking server down")

    tracker = WorkerTracker("mlflow", Broken())
    tracker.log({"stage": "ft", "step": 1, "loss": 0.5})
    tracker.log({"stage": "ft", "step": 2, "loss": 0.4})  # off now: no second failure
    out = capsys.readouterr().out
    assert out.count("failed and is off for this run") == 1 and "tracking server down" in out
