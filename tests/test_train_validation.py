"""Validation during training and the best-on-validation checkpoint (method.md §8.1).

Unit tests of the schedule and of the keep-best logic on hand-made checkpoint directories
(local and on a moto S3), the callback on real untrained checkpoints scored on a tiny val
split, then one small real ``run_training`` (interrupted and resumed) whose ``best/`` must hold
the checkpoint of the highest val Dice and serve ``evaluate --checkpoint best``.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
from test_train_ray import ray_cluster  # noqa: F401  (its module fixture: one local Ray for the slow test)

from action_ray.config import load_config
from action_ray.runs.best import BestKeeper, read_best
from action_ray.runs.layout import BEST_DIR, BEST_NEW, BEST_OLD, BEST_RECORD
from action_ray.runs.logs import read_validation_log
from action_ray.train.validation import CheckpointValidator, ValidationCallback, ValidationSchedule
from action_ray.urls import filesystem_for


# ------------------------------------------------------------------------------- schedule
def test_schedule_scores_multiples_of_val_every_and_the_last_step():
    exact = ValidationSchedule(val_every=4, checkpoint_every=2, last_step=11)
    assert exact.steps() == [4, 8, 11]
    assert [s for s in range(1, 12) if exact.due(s)] == [4, 8, 11]
    # not a multiple: the first checkpoint at or after each multiple of val_every, then the last
    grid = ValidationSchedule(val_every=50, checkpoint_every=40, last_step=200)
    assert grid.steps() == [80, 120, 160, 200]
    assert "eval.val_every=50" in grid.describe() and "train.checkpoint_every=40" in grid.describe()
    assert "not a multiple" not in exact.describe()
    # val_every below the checkpoint spacing: every checkpoint
    assert ValidationSchedule(1000, 5000, 30000).steps() == [5000, 10000, 15000, 20000, 25000, 30000]
    off = ValidationSchedule(0, 2, 10)
    assert not off.enabled and off.steps() == [] and not off.due(10)
    assert ValidationSchedule(1, 1, 8).steps() == list(range(1, 9))


def test_every_packaged_preset_and_sweep_base_loads_and_scores_the_last_ft_step():
    from action_ray.config import preset_names
    from action_ray.tuning.space import load_sweep

    for name in preset_names():
        # sweep files (tune-*) hold a base preset plus overrides: check the config they train
        config = load_sweep(name).base_config() if name.startswith("tune-") else load_config(name)
        schedule = ValidationSchedule.of(config)
        assert schedule.enabled and schedule.steps()[-1] == config.stage("ft").iterations, name


# ----------------------------------------------------------------------------- best keeper
def fake_checkpoint(root, name: str, step: int) -> str:
    """A checkpoint-shaped directory whose state.pt names it (the keeper never parses it)."""
    path = os.path.join(str(root), name)
    os.makedirs(path)
    with open(os.path.join(path, "state.pt"), "w") as handle:
        handle.write(f"weights of {name}")
    with open(os.path.join(path, "meta.json"), "w") as handle:
        json.dump({"stage": "ft", "step": step}, handle)
    return path


def kept_weights(run_dir) -> str:
    fs, root = filesystem_for(str(run_dir))
    with fs.open(f"{root}/{BEST_DIR}/state.pt", "r") as handle:
        return handle.read()


def test_better_replaces_worse_does_not_and_a_tie_keeps_the_earlier(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    a, b, c, d = (fake_checkpoint(run, f"checkpoint_{n}", n) for n in (2, 4, 6, 8))
    keeper = BestKeeper(str(run))
    assert keeper.current() is None
    assert keeper.offer(2, 0.40, a) and kept_weights(run) == "weights of checkpoint_2"
    assert keeper.offer(4, 0.55, b) and kept_weights(run) == "weights of checkpoint_4"
    assert not keeper.offer(6, 0.50, c) and kept_weights(run) == "weights of checkpoint_4"
    assert not keeper.offer(8, 0.55, d)  # a tie keeps the earlier checkpoint
    assert not keeper.offer(8, float("nan"), d)
    best = keeper.current()
    assert (best.ft_step, best.val_dice, best.source) == (4, 0.55, b)
    assert best.checkpoint == f"{run}/{BEST_DIR}"
    assert json.loads((run / BEST_RECORD).read_text())["ft_step"] == 4  # the copy at the top
    assert sorted(os.listdir(run / BEST_DIR)) == [BEST_RECORD, "meta.json", "state.pt"]
    assert not (run / BEST_NEW).exists() and not (run / BEST_OLD).exists()


def test_a_resumed_run_reads_the_previous_best(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    first = fake_checkpoint(run, "checkpoint_a", 4)
    assert BestKeeper(str(run)).offer(4, 0.7, first)
    later = fake_checkpoint(run, "checkpoint_b", 8)
    resumed = BestKeeper(str(run))  # a new session: nothing in memory
    assert not resumed.offer(8, 0.6, later)
    assert kept_weights(run) == "weights of checkpoint_a"
    assert read_best(str(run)).ft_step == 4
    assert resumed.offer(12, 0.8, later) and read_best(str(run)).ft_step == 12


def test_a_failed_copy_leaves_no_partial_best_and_keeps_the_old_one(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    good = fake_checkpoint(run, "checkpoint_good", 2)
    keeper = BestKeeper(str(run))
    assert keeper.offer(2, 0.3, good)
    broken = fake_checkpoint(run, "checkpoint_broken", 4)
    os.remove(os.path.join(broken, "state.pt"))  # the copy fails after it has started
    with pytest.raises(FileNotFoundError):
        keeper.offer(4, 0.9, broken)
    assert sorted(os.listdir(run)) == sorted([BEST_DIR, BEST_RECORD, "checkpoint_good", "checkpoint_broken"])
    assert kept_weights(run) == "weights of checkpoint_good" and keeper.current().ft_step == 2
    # a source without its completion marker is refused before anything is touched
    os.remove(os.path.join(good, "meta.json"))
    with pytest.raises(FileNotFoundError, match="missing meta.json"):
        keeper.offer(6, 0.95, good)
    assert keeper.current().ft_step == 2


def test_a_crash_between_the_two_renames_is_repaired_from_the_old_best(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    keeper = BestKeeper(str(run))
    assert keeper.offer(2, 0.3, fake_checkpoint(run, "checkpoint_2", 2))
    os.rename(run / BEST_DIR, run / BEST_OLD)  # as if the process died mid-swap
    fake_checkpoint(run, BEST_NEW, 4)
    assert keeper.current() is None  # readers do not touch the directory
    assert (run / BEST_NEW).exists()
    assert keeper.current(repair=True).ft_step == 2  # the writer restores the old best
    assert not (run / BEST_OLD).exists() and not (run / BEST_NEW).exists()
    assert not keeper.offer(4, 0.2, fake_checkpoint(run, "checkpoint_4", 4))


def test_keeper_on_s3_writes_the_marker_last_and_refuses_worse(s3_server, tmp_path):
    bucket = s3_server.new_bucket("best")
    run = f"s3://{bucket}/runs/r1"
    options = s3_server.storage_options
    fs, _ = filesystem_for(run, options)
    sources = []
    for step in (2, 4):
        local = fake_checkpoint(tmp_path, f"c{step}", step)
        for name in ("state.pt", "meta.json"):
            fs.put_file(os.path.join(local, name), f"{bucket}/runs/r1/checkpoint_{step}/{name}")
        sources.append(f"{run}/checkpoint_{step}")
    keeper = BestKeeper(run, options)
    assert keeper.offer(2, 0.5, sources[0])
    assert not keeper.offer(4, 0.4, sources[1])
    assert BestKeeper(run, options).offer(4, 0.6, sources[1])
    with fs.open(f"{bucket}/runs/r1/best/state.pt", "r") as handle:
        assert handle.read() == "weights of c4"
    assert read_best(run, options).ft_step == 4
    # an interrupted copy (marker removed first) reads as no best, not a half-written one
    fs.rm(f"{bucket}/runs/r1/best/meta.json")
    assert read_best(run, options) is None


# ---------------------------------------------------------------- callback, real scoring
@pytest.fixture(scope="module")
def scored_run(tmp_path_factory):
    """(store url, run dir, two untrained FT checkpoints): the test_evaluate tiny store (1 val case)."""
    from test_evaluate import make_store, phantom, save_run, tiny_config

    root = tmp_path_factory.mktemp("validation")
    store = make_store(root / "store.zarr", {"v0": ("val", *phantom(20)), "t0": ("test", *phantom(1))})
    config = tiny_config(store.url)
    run = root / "run"
    checkpoints = [str(save_run(run, config, subdir=f"checkpoint_{step}", step=step)) for step in (4, 8)]
    return store.url, run, checkpoints


def test_callback_validates_due_ft_checkpoints_and_evaluate_best_names_the_selection(scored_run, capsys):
    from action_ray.evaluation import evaluate_run
    from action_ray.runs.resolve import checkpoint_selection, resolve_checkpoint

    store_url, run, (ckpt4, ckpt8) = scored_run
    callback = ValidationCallback(CheckpointValidator(str(run), store_url),
                                  ValidationSchedule(val_every=4, checkpoint_every=2, last_step=8))
    callback.after_report(None, [{"stage": "p2", "step": 4}], SimpleNamespace(path=ckpt4))  # pre-training
    callback.after_report(None, [{"stage": "ft", "step": 4}], None)  # no checkpoint
    callback.after_report(None, [{"stage": "ft", "step": 2}], SimpleNamespace(path=ckpt4))  # not due
    assert read_validation_log(str(run)) == []
    callback.after_report(None, [{"stage": "ft", "step": 4}], SimpleNamespace(path=ckpt4))
    callback.after_report(None, [{"stage": "ft", "step": 8}], SimpleNamespace(path=ckpt8))
    rows = read_validation_log(str(run))
    assert [r["ft_step"] for r in rows] == [4, 8] and "[validation ft 8]" in capsys.readouterr().out
    assert all(0.0 <= r["val_dice"] <= 1.0 and r["checkpoint_path"] for r in rows)
    assert {"val_dice_RV", "val_hd95_mm_LV"} <= set(rows[0])
    assert (run / "validation" / "ft-000004" / "summary.json").exists()
    winner = max(rows, key=lambda r: (r["val_dice"], -r["ft_step"]))  # ties keep the earlier
    assert [r["new_best"] for r in rows] == [True, rows[1]["val_dice"] > rows[0]["val_dice"]]
    best = read_best(str(run))
    assert (best.ft_step, best.source) == (winner["ft_step"], winner["checkpoint_path"])

    assert resolve_checkpoint(str(run), "best") == str(run / BEST_DIR)
    summary = evaluate_run(str(run), store_url, split="test", checkpoint="best", progress=False,
                           out_dir=str(run / "eval-best"))
    assert summary["step"] == winner["ft_step"]
    assert summary["selection"]["choice"] == "best" and summary["selection"]["ft_step"] == winner["ft_step"]
    assert summary["selection"]["val_dice"] == pytest.approx(winner["val_dice"])
    assert summary["checkpoint_choice"].startswith(f"best on validation (FT step {winner['ft_step']}")
    assert checkpoint_selection(ckpt8, ckpt8)["choice"] == "path"
    assert checkpoint_selection(str(run / "stages" / "ft"), "last")["choice"] == "last"


def test_a_resume_first_scores_the_checkpoint_a_killed_driver_left_unvalidated(scored_run, tmp_path, capsys):
    """The driver died after Ray recorded checkpoint 8 but before validating it: the resumed
    run starts from 8 and would never score it; ``before_resume`` does, once."""
    import json

    from test_evaluate import save_run, tiny_config

    store_url, _, _ = scored_run
    run = tmp_path / "run"
    config = tiny_config(store_url)
    ckpt4, ckpt8 = (str(save_run(run, config, subdir=f"checkpoint_{s}", step=s)) for s in (4, 8))
    callback = ValidationCallback(CheckpointValidator(str(run), store_url),
                                  ValidationSchedule(val_every=4, checkpoint_every=2, last_step=12))
    callback.after_report(None, [{"stage": "ft", "step": 4}], SimpleNamespace(path=ckpt4))
    lines: list[str] = []
    callback.before_resume(lines.append)  # no Ray snapshot: Ray would start afresh, nothing to score
    assert [r["ft_step"] for r in read_validation_log(str(run))] == [4] and lines == []

    (run / "checkpoint_manager_snapshot.json").write_text(
        json.dumps({"latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_8"}}))
    callback.before_resume(lines.append)
    rows = read_validation_log(str(run))
    assert [r["ft_step"] for r in rows] == [4, 8] and rows[1]["checkpoint_path"] == ckpt8
    assert "never validated" in lines[0] and "[validation ft 8]" not in capsys.readouterr().out
    callback.before_resume(lines.append)  # already scored: nothing again
    assert len(read_validation_log(str(run))) == 2 and len(lines) == 1

    not_due = ValidationCallback(CheckpointValidator(str(run), store_url),
                                 ValidationSchedule(val_every=5, checkpoint_every=5, last_step=10))
    (run / "validation.jsonl").unlink()
    not_due.before_resume(lines.append)
    assert read_validation_log(str(run)) == [] and len(lines) == 1


def test_training_attaches_validation_only_when_it_can_score(scored_run, tmp_path):
    from action_ray.train.trainer import validation_callbacks

    store_url, _, _ = scored_run
    lines: list[str] = []
    base = ["method=supervised", f"data.store={store_url}", "schedule.ft.iterations=8",
            "train.report_every=2", "train.checkpoint_every=2"]
    assert validation_callbacks(load_config("cpu-demo", base + ["eval.val_every=0"]), str(tmp_path), lines.append) == []
    assert "validation off (eval.val_every=0)" in lines[-1]
    assert validation_callbacks(load_config("cpu-demo", base + ["train.num_workers=0"]), str(tmp_path), lines.append) == []
    assert "local mode" in lines[-1]
    [callback] = validation_callbacks(load_config("cpu-demo", base + ["eval.val_every=4"]), str(tmp_path), lines.append)
    assert callback.schedule.steps() == [4, 8] and "at FT steps 4, 8" in lines[-1]
    pretrain = load_config("cpu-demo", base[1:] + ["stages=[p1, p2]"])
    assert validation_callbacks(pretrain, str(tmp_path), lines.append) == []


# ------------------------------------------------------------------------ a real training run
def supervised_run(tmp_path, name: str, *extra: str):
    """(store url, storage path, config) of a tiny supervised FT run on the tune store, reporting
    every step and checkpointing every 2."""
    from test_train_ray import config_for
    from test_tune_sweep import make_tune_store

    store_url = str(tmp_path / "store.zarr")
    make_tune_store(store_url)
    storage = str(tmp_path / "runs")
    config = config_for(store_url, storage, name, "method=supervised", "train.num_workers=1",
                        "train.report_every=1", "train.checkpoint_every=2", *extra)
    return store_url, storage, config


@pytest.mark.slow
def test_run_training_keeps_the_best_validated_checkpoint_across_a_resume(ray_cluster, tmp_path, capsys,
                                                                           monkeypatch):
    """Supervised FT, 1 worker, 6 steps, checkpoints every 2, validation every 4: stopped at
    step 5 and resumed. Validation rows at FT steps 4 and 6, ``best/`` holds the max-Dice one
    (Ray keeps only the newest checkpoint, so best/ must be a copy), evaluate serves it.
    With ``train.tracking=mlflow``: one MLflow run across the resume, with the resolved config as
    parameters, every report's loss at its step and the validation Dice at its FT step."""
    from mlflow import MlflowClient
    from action_ray.cli import main as cli_main
    from action_ray.runs.checkpoint import load_checkpoint
    from action_ray.runs.logs import read_metrics, read_result
    from action_ray.train.trainer import run_training

    store_url, storage, config = supervised_run(tmp_path, "val", "schedule.ft.iterations=6",
                                                "train.num_to_keep=1", "eval.val_every=4", "train.tracking=mlflow")
    lines: list[str] = []
    stopped = run_training(config, stop_after_steps=5, log=lines.append)
    assert stopped["interrupted"] and "validation on the val split at FT steps 4, 6" in lines
    run = f"{storage}/val"
    assert [r["ft_step"] for r in read_validation_log(run)] == [4]
    config.train.resume = True
    summary = run_training(config, log=lines.append)
    rows = read_validation_log(run)
    assert [r["ft_step"] for r in rows] == [4, 6]
    winner = max(rows, key=lambda r: (r["val_dice"], -r["ft_step"]))
    best = load_checkpoint(f"{run}/{BEST_DIR}")
    assert (best.stage, best.step) == ("ft", winner["ft_step"])
    result = read_result(run)
    assert result["best_checkpoint"] == f"{run}/{BEST_DIR}" and result["best_ft_step"] == winner["ft_step"]
    assert result["best_val_dice"] == pytest.approx(winner["val_dice"])
    assert summary["best_ft_step"] == winner["ft_step"]
    assert not any(name.startswith(".best") for name in os.listdir(run))

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(f"file://{storage}/mlruns")
    (tracked,) = client.search_runs([client.get_experiment_by_name("action-ray").experiment_id])
    assert tracked.info.run_name == "val" and tracked.data.params["method"] == "supervised"
    assert tracked.data.params["schedule.ft.iterations"] == "6"
    reported = {r["step"]: r["loss"] for r in read_metrics(run)}
    history = client.get_metric_history(tracked.info.run_id, "ft/loss")
    assert sorted({m.step for m in history}) == [1, 2, 3, 4, 5, 6]  # step 5 was done twice (resumed from 4)
    assert all(m.value == pytest.approx(reported[m.step]) for m in history if m.step != 5)
    dice = client.get_metric_history(tracked.info.run_id, "val/dice")
    assert [(m.step, m.value) for m in dice] == [(r["ft_step"], pytest.approx(r["val_dice"])) for r in rows]

    capsys.readouterr()
    out = str(tmp_path / "eval-best")
    assert cli_main(["evaluate", run, "--store", store_url, "--checkpoint", "best", "--out", out, "--no-progress"]) == 0
    assert f"best on validation (FT step {winner['ft_step']}" in capsys.readouterr().out
    with open(os.path.join(out, "summary.json")) as handle:
        evaluated = json.load(handle)
    assert evaluated["step"] == winner["ft_step"] and evaluated["split"] == "test"



def test_a_failing_validation_is_logged_recorded_and_skipped(tmp_path):
    from action_ray.train.validation import CheckpointValidator

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    validator = CheckpointValidator(str(run_dir), str(tmp_path / "no-such-store.zarr"))
    lines: list[str] = []
    assert validator.try_validate(300, str(tmp_path / "ckpt"), log=lines.append) is None
    assert len(lines) == 1 and "[validation ft 300] failed" in lines[0] and "training continues" in lines[0]
    rows = read_validation_log(str(run_dir))
    assert [r["ft_step"] for r in rows] == [300] and "error" in rows[0]


def test_a_retried_step_replaces_its_validation_row(tmp_path):
    from action_ray.runs.logs import append_validation_row

    for step, dice in ((100, 0.1), (200, 0.2), (200, 0.25), (100, 0.15)):  # a retry repeats 100, 200
        append_validation_row(str(tmp_path), {"ft_step": step, "val_dice": dice})
    assert [(r["ft_step"], r["val_dice"]) for r in read_validation_log(str(tmp_path))] == [(100, 0.15), (200, 0.25)]
