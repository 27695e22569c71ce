"""Sweep results: trial rows from Tune results, mean ± sd over draws, CSV/markdown/plot files."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from typing import Any

from action_ray.tuning.plots import PLOT_NAME, plot_series
from action_ray.tuning.outputs import write_results
from action_ray.tuning.results import grouped, results_markdown, trial_rows

SPACE = ["method", "draw"]


@dataclass
class FakeResult:
    """The attributes of ``ray.tune.Result`` that trial_rows reads."""

    config: dict[str, Any]
    metrics: dict[str, Any]
    error: Exception | None = None
    path: str = ""
    extra: dict = field(default_factory=dict)


def finished(trial, method, seed, labelled, total, val, test=None):
    metrics = {"trial_id": trial, "val_dice": val, "ft_step": 40, "train_seconds": 12.0,
               "labelled_patients": labelled, "train_patients": total, "label_fraction": labelled / total,
               "config": {"ignored": 1}}
    if test is not None:
        metrics.update(test_dice=test, test_dice_LV=test + 0.01, test_hd95_mm=4.0 + seed)
    return FakeResult({"method": method, "draw": {"train.seed": seed, "data.split_seed": seed}}, metrics)


def sample_grid():
    return [
        finished("t1", "supervised", 0, 1, 20, 0.40, 0.41),
        finished("t2", "supervised", 1, 1, 20, 0.50, 0.45),
        finished("t3", "action", 0, 1, 20, 0.70, 0.66),
        finished("t4", "action", 1, 1, 20, 0.80, 0.70),
        FakeResult({"method": "action", "draw": {"train.seed": 2, "data.split_seed": 2}},
                   {"trial_id": "t5", "val_dice": 0.1, "ft_step": 20}),
        FakeResult({"method": "supervised", "draw": {"train.seed": 2, "data.split_seed": 2}}, {},
                   error=RuntimeError("boom\nsecond line"), path="/x/trial_t6"),
    ]


def test_rows_expand_params_and_mark_status():
    rows = {r["trial"]: r for r in trial_rows(sample_grid(), SPACE)}
    assert rows["t1"]["train.seed"] == 0 and rows["t1"]["method"] == "supervised"
    assert rows["t1"]["status"] == "done" and rows["t5"]["status"] == "stopped"
    assert rows["trial_t6"]["status"] == "error" and rows["trial_t6"]["error"] == "boom"
    assert "config" not in rows["t1"]


def test_grouped_means_and_sds_over_draws_only_for_finished_trials():
    rows = trial_rows(sample_grid(), SPACE)
    groups = {g["method"]: g for g in grouped(rows, ["val_dice", "test_dice"])}
    mean, sd, n = groups["action"]["val_dice"]
    assert n == 2 and math.isclose(mean, 0.75) and math.isclose(sd, math.sqrt(0.005))
    assert groups["supervised"]["test_dice"][2] == 2  # the errored trial is not averaged
    assert math.isclose(groups["action"]["label_fraction"], 0.05)


def test_markdown_table_shows_mean_sd_in_percent():
    text = results_markdown(trial_rows(sample_grid(), SPACE), "val_dice", seconds=90, command="action-ray tune x")
    assert "`action-ray tune x`" in text and "1.5 min" in text
    action_line = next(line for line in text.splitlines() if line.startswith("| action |"))
    assert "75.0 ± 7.1" in action_line and "68.0 ± 2.8" in action_line  # val, test Dice
    assert "| 1 (5.0 %) | 2 |" in action_line
    assert "boom" in text  # errors are listed


def test_files_are_written(tmp_path):
    rows = trial_rows(sample_grid(), SPACE)
    paths = write_results(str(tmp_path), rows, metric="val_dice")
    assert len(paths) == 3
    with open(tmp_path / "results.csv") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 6 and {"trial", "status", "method", "train.seed", "val_dice", "test_dice_LV"} <= set(table[0])
    png = (tmp_path / PLOT_NAME).read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_plot_series_one_line_per_method_with_test_dice():
    series = plot_series(trial_rows(sample_grid(), SPACE), "val_dice")
    assert set(series) == {"action", "supervised"}
    (x, mean, sd), = series["action"]
    assert math.isclose(x, 0.05) and math.isclose(mean, 0.68) and sd > 0
