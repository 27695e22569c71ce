"""A tiny sweep end to end on CPU: two trials (supervised, ACTION), each a TorchTrainer run
whose FT checkpoints are scored on the validation split and reported to Tune under ASHA,
then the test split once at the end; results files written. Plus the CLI's dry run."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from action_ray.cli import main as cli_main
from action_ray.store import CaseMeta, create_store
from tests.processes import kill_tree

#: A tiny learnable store: discs (class 1) inside rings (class 2) on noise, patient-level splits.
SPLITS = {"train": 6, "val": 2, "test": 2}


def disc_case(rng: np.random.Generator, shape=(4, 32, 32)) -> tuple[np.ndarray, np.ndarray]:
    """(image, label) of one case: a disc of class 1 with a ring of class 2, per slice."""
    z, h, w = shape
    yy, xx = np.mgrid[:h, :w]
    label = np.zeros(shape, np.uint8)
    for k in range(z):
        cy, cx = rng.uniform(10, h - 10), rng.uniform(10, w - 10)
        r = rng.uniform(3, 6)
        d = np.hypot(yy - cy, xx - cx)
        label[k][d < r + 2.5] = 2
        label[k][d < r] = 1
    image = label * np.float32(300) + rng.normal(200, 40, shape).astype(np.float32)
    return image.astype(np.float32), label


def make_tune_store(url: str, seed: int = 0, splits: dict[str, int] = SPLITS):
    store = create_store(url, name="tune-test", modality="MR", layout="folder",
                         classes={0: "background", 1: "disc", 2: "ring"})
    rng = np.random.default_rng(seed)
    index = 0
    for split, count in splits.items():
        for _ in range(count):
            image, label = disc_case(rng)
            meta = CaseMeta(f"case{index:02d}", f"patient{index:02d}", split, (5.0, 1.5, 1.5),
                            np.eye(4).tolist(), {"image": "synthetic"})
            store.write_case(meta, image, label)
            index += 1
    return store


TINY = ["data.slice_size=32", "schedule.p1.iterations=4", "schedule.p2.iterations=4",
        "schedule.ft.iterations=8", "train.report_every=2", "train.checkpoint_every=4"]


@pytest.fixture(scope="module")
def store_url(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("tune") / "store.zarr")
    make_tune_store(url)
    return url


def test_dry_run_lists_the_grid_without_ray(store_url, capsys):
    assert cli_main(["tune", "--config", "tune-cpu", f"data.store={store_url}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "12 grid point(s)" in out and out.count("method=") == 12


def test_preflight_refuses_a_trial_that_cannot_run_naming_it_before_ray(store_url, tmp_path, capsys):
    import ray

    argv = ["tune", "--config", "tune-cpu", f"data.store={store_url}", f"tune.storage_path={tmp_path}",
            "space.method={grid_search: [supervised, action]}", "space.data.label_ratio={grid_search: [0.34, 1.0]}"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "method=action" in err and "data.label_ratio=1.0" in err
    assert "unlabelled" in err
    assert not ray.is_initialized() and not any(tmp_path.iterdir())  # nothing started, nothing written


def test_resume_without_an_interrupted_sweep_is_refused_before_ray(store_url, tmp_path, capsys):
    import ray

    argv = ["tune", "--config", "tune-cpu", f"data.store={store_url}", f"tune.storage_path={tmp_path}",
            "tune.name=never-started", "--resume"]
    assert cli_main(argv) == 2
    assert "no interrupted sweep" in capsys.readouterr().err
    assert not ray.is_initialized() and not any(tmp_path.iterdir())


def test_preflight_needs_a_labelled_val_split(tmp_path, capsys):
    url = str(tmp_path / "noval.zarr")
    make_tune_store(url, splits={"train": 4, "test": 1})
    assert cli_main(["tune", "--config", "tune-cpu", f"data.store={url}", "--dry-run"]) == 2
    assert "no labelled case in its val split" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_sweep_completes_and_writes_results(store_url, tmp_path, capsys, monkeypatch):
    """Also: with ``train.tracking=mlflow`` a sweep logs one MLflow run per trial, named after the
    trial's run folder, with its method as a parameter and its losses and validation Dice."""
    import ray
    from mlflow import MlflowClient

    from action_ray.tuning.driver import read_validation_log

    argv = ["tune", "--config", "tune-cpu", f"data.store={store_url}", f"tune.storage_path={tmp_path}",
            "tune.name=tiny", "space.method={grid_search: [supervised, action]}", "space.data.label_ratio=0.34",
            "space.draw={train.seed: 0, data.split_seed: 0}", "tune.grace_period=4", "tune.test_split=true",
            "train.tracking=mlflow", *TINY]
    try:
        assert cli_main(argv) == 0
    finally:
        ray.shutdown()
    sweep_dir = tmp_path / "tiny"
    assert "# Sweep results" in capsys.readouterr().out  # the table is printed too
    with open(sweep_dir / "results.csv") as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"supervised", "action"}
    assert all(row["status"] in ("done", "stopped") for row in rows.values()), rows
    done = [row for row in rows.values() if row["status"] == "done"]
    assert done, "ASHA stops at most one of two trials"
    for row in done:
        assert int(row["ft_step"]) == 8
        assert 0.0 <= float(row["val_dice"]) <= 1.0 and 0.0 <= float(row["test_dice"]) <= 1.0
        assert {"val_dice_disc", "val_dice_ring", "test_hd95_mm_disc", "label_fraction"} <= set(row)
        assert (row["labelled_patients"], row["train_patients"]) == ("2", "6")
        # every FT checkpoint (steps 4 and 8) was validated; the final Tune result is the last one
        history = read_validation_log(row["run_dir"])
        assert [h["ft_step"] for h in history] == [4, 8]
        assert math.isclose(history[-1]["val_dice"], float(row["val_dice"]))
        with open(f"{row['run_dir']}/config.yaml") as handle:
            assert f"method: {row['method']}" in handle.read()
    text = (sweep_dir / "results.md").read_text()
    assert "`action-ray tune" in text and "| 2 (33.3 %) |" in text
    assert (sweep_dir / "dice_vs_label_ratio.png").read_bytes()[:4] == b"\x89PNG"
    assert "method:" in (sweep_dir / "sweep.yaml").read_text()  # the resolved sweep is kept

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run_dirs = {row["method"]: row["run_dir"].rstrip("/") for row in rows.values()}
    (storage,) = {d.rsplit("/", 1)[0] for d in run_dirs.values()}
    client = MlflowClient(f"file://{storage}/mlruns")
    tracked = client.search_runs([client.get_experiment_by_name("action-ray").experiment_id])
    by_name = {run.info.run_name: run for run in tracked}
    assert len(tracked) == 2 and set(by_name) == {d.rsplit("/", 1)[1] for d in run_dirs.values()}
    for method, run_dir in run_dirs.items():
        run = by_name[run_dir.rsplit("/", 1)[1]]
        assert run.data.params["method"] == method
        losses = client.get_metric_history(run.info.run_id, "ft/loss")
        assert [m.step for m in losses] == [2, 4, 6, 8][:len(losses)] and len(losses) >= 2
        dice = client.get_metric_history(run.info.run_id, "val/dice")
        history = read_validation_log(run_dir)
        assert [(m.step, m.value) for m in dice] == [(h["ft_step"], pytest.approx(h["val_dice"])) for h in history]


# ------------------------------------------------------------ an interrupted sweep, resumed
def _run_dirs(sweep_dir):
    runs = sweep_dir / "runs"
    return sorted(runs.iterdir()) if runs.exists() else []


@pytest.mark.slow
def test_a_sweep_killed_mid_run_resumes_keeping_finished_trials(store_url, tmp_path, capsys):
    """SIGKILL the driver of a 2-trial sweep once its short trial (10 FT steps) has finished while
    the long one (40) trains, then run the same command with --resume: the finished trial is not
    run again, the other continues from its last checkpoint, and no step is validated or logged
    twice. The two trials run at once (one Ray Train start-up less on the clock than in turn)."""
    import json
    import subprocess
    import sys
    import time

    import ray

    lengths = {0: 10, 1: 40}
    argv = ["tune", "--config", "tune-cpu", f"data.store={store_url}", f"tune.storage_path={tmp_path}",
            "tune.name=killed", "tune.scheduler=fifo", "tune.max_concurrent_trials=2",
            "space.method={grid_search: [supervised]}", "space.data.label_ratio=1.0",
            "space.draw={grid_search: [" + ", ".join(
                f"{{train.seed: {seed}, data.split_seed: {seed}, schedule.ft.iterations: {n}}}"
                for seed, n in lengths.items()) + "]}",
            "data.slice_size=32", "train.report_every=5", "train.checkpoint_every=10"]
    sweep_dir = tmp_path / "killed"
    log_path = tmp_path / "killed-sweep.log"
    log_file = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "action_ray.cli", *argv], start_new_session=True,
                            stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            dirs = _run_dirs(sweep_dir)
            finished = [d for d in dirs if (d / "result.json").exists()]
            started = [d for d in dirs if (d / "validation.jsonl").exists() and not (d / "result.json").exists()]
            if finished and started:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the sweep did not finish one trial while the other trained (exit code {proc.poll()}):\n"
                        + log_path.read_text()[-3000:])
    finally:
        kill_tree(proc)
        log_file.close()
    (first,) = finished
    assert json.loads((first / "result.json").read_text())["step"] == lengths[0]  # the short one
    first_result = (first / "result.json").read_bytes()
    first_validation = (first / "validation.jsonl").read_bytes()

    # the same command again is refused (before Ray) instead of mixing two sweeps
    assert cli_main(argv) == 2
    assert "--resume" in capsys.readouterr().err
    try:
        code = cli_main([*argv, "--resume"])
        assert code == 0, capsys.readouterr().err[-3000:]
    finally:
        ray.shutdown()
    with open(sweep_dir / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and all(row["status"] == "done" for row in rows), rows
    assert sorted(int(row["ft_step"]) for row in rows) == sorted(lengths.values())
    assert (first / "result.json").read_bytes() == first_result  # not trained again
    assert (first / "validation.jsonl").read_bytes() == first_validation
    for run_dir in _run_dirs(sweep_dir):
        total = json.loads((run_dir / "result.json").read_text())["step"]
        steps = [json.loads(line)["ft_step"] for line in (run_dir / "validation.jsonl").read_text().splitlines()]
        assert steps == list(range(10, total + 1, 10)), (run_dir.name, steps)
        logged = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert logged == list(range(5, total + 1, 5)), (run_dir.name, logged)
