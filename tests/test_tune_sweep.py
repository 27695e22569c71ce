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


def make_tune_store(url: str, seed: int = 0):
    store = create_store(url, name="tune-test", modality="MR", layout="folder",
                         classes={0: "background", 1: "disc", 2: "ring"})
    rng = np.random.default_rng(seed)
    index = 0
    for split, count in SPLITS.items():
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


@pytest.mark.slow
def test_tiny_sweep_completes_and_writes_results(store_url, tmp_path, capsys):
    import ray

    from action_ray.tuning.driver import read_validation_log

    argv = ["tune", "--config", "tune-cpu", f"data.store={store_url}", f"tune.storage_path={tmp_path}",
            "tune.name=tiny", "space.method={grid_search: [supervised, action]}", "space.data.label_ratio=0.34",
            "space.draw={train.seed: 0, data.split_seed: 0}", "tune.grace_period=4", "tune.test_split=true",
            *TINY]
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
