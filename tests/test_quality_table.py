"""bench quality: the paper-shaped table from trial rows (no training here; see test_tune_sweep)."""

from __future__ import annotations

from action_ray.bench.quality import PROFILES, label_row, quality_tables, timing_lines
from action_ray.tuning.space import check_trials, load_sweep


def row(method, seed, dice, hd95, *, patients=None, ratio=None, status="done"):
    out = {"trial": f"{method}{seed}{patients}{ratio}", "status": status, "method": method,
           "train.seed": seed, "data.split_seed": seed, "labelled_patients": patients or 2, "train_patients": 40,
           "test_dice": dice, "test_hd95_mm": hd95, "test_dice_LV": dice + 0.05, "test_hd95_mm_LV": hd95 - 1,
           "train_seconds": 100.0 + seed, "test_seconds": 5.0}
    if patients is not None:
        out["data.labelled_patients"] = patients
    else:
        out["data.label_ratio"] = ratio
    return out


ROWS = [
    row("supervised", 0, 0.40, 20.0, patients=1), row("supervised", 1, 0.50, 10.0, patients=1),
    row("action", 0, 0.80, 4.0, patients=1), row("action", 1, 0.70, 6.0, patients=1),
    row("supervised", 0, 0.60, 8.0, ratio=0.05), row("supervised", 0, 0.90, 2.0, ratio=1.0),
    row("action", 2, 0.10, 50.0, ratio=0.05, status="stopped"),
]


def test_label_rows_follow_the_paper():
    assert label_row({"data.labelled_patients": 1}) == "1 patient"
    assert label_row({"data.label_ratio": 0.05}) == "5 %"
    assert label_row({"data.label_ratio": 1.0}) == "100 %"


def test_table_has_mean_sd_per_cell_in_paper_order():
    text = quality_tables(ROWS)
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header, first, second, third = lines[0], lines[1], lines[2], lines[3]
    assert header.index("supervised") < header.index("action")
    assert first.startswith("| 1 patient") and second.startswith("| 5 %") and third.startswith("| 100 %")
    assert "45.0 ± 7.1 / 15.0 ± 7.1 (2)" in first and "75.0 ± 7.1 / 5.0 ± 1.4 (2)" in first
    # the ASHA-stopped ACTION trial is not a table cell
    assert second.endswith("| – |")
    assert "| 1 patient | action | 80.0 ± 7.1 | 4.0 ± 1.4 |" in text  # per-class LV row


def test_timing_lines_per_method():
    lines = timing_lines(ROWS)
    assert any(line.startswith("- supervised: 100 s") for line in lines)


def test_method_labels_mark_the_ablations():
    from action_ray.bench.quality import method_label

    assert method_label({"method": "action"}) == "action"
    assert method_label({"method": "action", "ft.anco_weight": 0}) == "action (no L_anco)"
    assert method_label({"method": "action", "ft.anco_weight": float("nan")}) == "action"
    assert method_label({"method": "supervised", "schedule.ft.iterations": 2100}) == "supervised (2100 FT steps)"


def test_profiles_are_valid_sweeps():
    for name, profile in PROFILES.items():
        sweep = load_sweep(profile.sweep, ["data.store=/nowhere", *profile.overrides])
        combos = check_trials(sweep, sweep.base_config())
        methods = {c["method"] for c in combos}
        assert methods >= {"supervised", "action"}, name
        if name != "smoke":  # >= 3 labelled-subset draws, deterministic, test never selects
            assert len(combos) >= 9 and {c["data.split_seed"] for c in combos} >= {0, 1, 2}
            assert sweep.base_config().train.deterministic or name == "full"
            assert sweep.tune.test_split and sweep.tune.scheduler == "fifo"
