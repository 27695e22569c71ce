"""The driver's progress, read from the run folder while the job runs."""

from __future__ import annotations

import json

from action_ray.train.follow import ReportFollower, report_losses


def write_rows(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def row(stage: str, step: int, loss: float, **extra) -> dict:
    return {"stage": stage, "step": step, "epoch": 0, "loss": loss, "lr": 0.1, "it_per_s": 2.0, "time": 1.0,
            "replicas_identical": True, "nodes": "n1", "grad_ratio/encoder/global": 3.0,
            "pseudo_foreground": 0.2, **extra}


def test_losses_leave_out_bookkeeping_and_diagnostics():
    assert report_losses(row("ft", 2, 0.5, supervised=0.25)) == {"loss": 0.5, "supervised": 0.25}


def test_new_reports_and_validations_become_lines_and_old_ones_are_not_repeated(tmp_path):
    metrics, validation = tmp_path / "metrics.jsonl", tmp_path / "validation.jsonl"
    write_rows(metrics, [row("p1", 2, 0.9)])  # a resumed run's history
    lines: list[str] = []
    follower = ReportFollower(str(tmp_path), {"p1": 4, "ft": 4}, "lines", checkpoint_every=4, log=lines.append,
                              interval_s=0.05)
    with follower:
        write_rows(metrics, [row("p1", 2, 0.9), row("p1", 4, 0.5), row("ft", 2, 0.25)])
        follower.poll()
        validation.write_text(json.dumps({"ft_step": 2, "val_dice": 0.5, "new_best": True}) + "\n")
        metrics.write_text(metrics.read_text() + json.dumps(row("ft", 4, 0.125)) + "\n" + '{"stage": "f')
    assert lines == [
        "[p1 4/4] loss 0.5000 | 2.00 it/s | eta 0s | checkpoint",
        "[ft 2/4] loss 0.2500 | 2.00 it/s | eta 1s",
        "[validation ft 2] val Dice 0.5000 | new best",
        "[ft 4/4] loss 0.1250 | 2.00 it/s | eta 0s | checkpoint",
    ]


def test_a_failed_validation_is_shown_as_skipped(tmp_path):
    lines: list[str] = []
    with ReportFollower(str(tmp_path), {}, "lines", checkpoint_every=2, log=lines.append, interval_s=0.05):
        (tmp_path / "validation.jsonl").write_text(json.dumps({"ft_step": 6, "error": "OSError: gone"}) + "\n")
    assert lines == ["[validation ft 6] failed (OSError: gone); skipped, training continues"]


def test_announcements_come_first_and_a_restart_shows_its_steps_again(tmp_path):
    metrics, announced = tmp_path / "metrics.jsonl", tmp_path / "announcements.jsonl"
    lines: list[str] = []
    follower = ReportFollower(str(tmp_path), {"ft": 6}, "lines", checkpoint_every=4, log=lines.append)
    write_rows(announced, [{"time": 0.5, "text": "stage ft: steps 1..6 from epoch 0, batch 0"}])
    write_rows(metrics, [row("ft", 2, 0.5, time=1.0), row("ft", 4, 0.4, time=2.0)])
    follower.poll()
    # the worker group died after step 5; the new one starts from the step-4 checkpoint
    write_rows(announced, [{"time": 0.5, "text": "stage ft: steps 1..6 from epoch 0, batch 0"},
                           {"time": 5.0, "text": "stage ft: steps 5..6 from epoch 0, batch 2"}])
    write_rows(metrics, [row("ft", 2, 0.5, time=1.0), row("ft", 4, 0.4, time=2.0), row("ft", 6, 0.3, time=9.0)])
    follower.poll()
    # then a restart from step 2 (the step-4 checkpoint lost): step 4 is done again and shown again
    write_rows(metrics, [row("ft", 2, 0.5, time=1.0), row("ft", 4, 0.4, time=12.0)])
    follower.poll()
    assert lines == ["stage ft: steps 1..6 from epoch 0, batch 0",
                     "[ft 2/6] loss 0.5000 | 2.00 it/s | eta 2s",
                     "[ft 4/6] loss 0.4000 | 2.00 it/s | eta 1s | checkpoint",
                     "stage ft: steps 5..6 from epoch 0, batch 2",
                     "[ft 6/6] loss 0.3000 | 2.00 it/s | eta 0s | checkpoint",
                     "[ft 4/6] loss 0.4000 | 2.00 it/s | eta 1s | checkpoint"]


def test_a_stage_start_found_with_the_last_report_of_the_previous_stage_comes_after_it(tmp_path):
    """One poll finds p1's last report and the p2 start announcement written after it: the
    announcement is shown between p1's last report and p2's first, in the order they happened."""
    lines: list[str] = []
    follower = ReportFollower(str(tmp_path), {"p1": 4, "p2": 4}, "lines", checkpoint_every=4, log=lines.append)
    write_rows(tmp_path / "announcements.jsonl", [{"time": 0.5, "text": "stage p1: steps 1..4"},
                                                  {"time": 3.5, "text": "stage p2: steps 1..4"}])
    write_rows(tmp_path / "metrics.jsonl", [row("p1", 2, 0.9, time=1.0), row("p1", 4, 0.8, time=3.0),
                                            row("p2", 2, 0.7, time=4.0)])
    follower.poll()
    assert [line.split(" loss")[0] for line in lines] == [
        "stage p1: steps 1..4", "[p1 2/4]", "[p1 4/4]", "stage p2: steps 1..4", "[p2 2/4]"]
    write_rows(tmp_path / "announcements.jsonl", [{"time": 0.5, "text": "stage p1: steps 1..4"},
                                                  {"time": 3.5, "text": "stage p2: steps 1..4"},
                                                  {"time": 9.0, "text": "stage ft: steps 1..4"}])
    follower.poll()  # an announcement with no report after it yet is shown at once
    assert lines[-1] == "stage ft: steps 1..4"
