"""The run folder's own helpers: URLs from fsspec paths, whole-file writes, the JSON-lines logs."""

from __future__ import annotations

import json

from action_ray.runs.files import read_json, read_text, write_file
from action_ray.runs.layout import ANNOUNCEMENTS_LOG, METRICS_LOG, join, stage_checkpoint, validation_reports
from action_ray.runs.logs import (
    announce,
    append_validation_row,
    read_announcements,
    read_jsonl,
    read_metrics,
    read_result,
    read_validation_log,
    write_metrics,
    write_result,
)
from action_ray.urls import with_protocol


def test_fsspec_paths_get_the_scheme_of_their_url_back_and_local_paths_stay():
    assert with_protocol("s3://bucket/runs/r1", "bucket/runs/r1/checkpoint_3") == "s3://bucket/runs/r1/checkpoint_3"
    assert with_protocol("s3://bucket/runs/r1", "s3://bucket/x") == "s3://bucket/x"
    assert with_protocol("/tmp/runs/r1", "/tmp/runs/r1/checkpoint_3") == "/tmp/runs/r1/checkpoint_3"


def test_paths_of_a_run_join_local_and_remote_roots_alike():
    assert stage_checkpoint("s3://b/runs/r1/", "ft") == "s3://b/runs/r1/stages/ft"
    assert validation_reports("/runs/r1", 300) == "/runs/r1/validation/ft-000300"
    assert join("b/runs/r1", "best", "meta.json") == "b/runs/r1/best/meta.json"


def test_a_file_is_replaced_whole_in_a_new_folder_and_leaves_no_temporary(tmp_path):
    where = str(tmp_path / "run" / "sub" / "result.json")
    assert read_text(where) is None and read_json(where) is None
    write_file(where, json.dumps({"a": 1}))
    write_file(where, b'{"a": 2}')
    assert read_json(where) == {"a": 2}
    assert sorted(p.name for p in (tmp_path / "run" / "sub").iterdir()) == ["result.json"]


def test_a_row_cut_short_is_left_out_and_blank_lines_are_skipped(tmp_path):
    (tmp_path / METRICS_LOG).write_text('{"step": 1}\n\n{"step": 2}\n{"step": 3, "lo')
    assert read_metrics(str(tmp_path)) == [{"step": 1}, {"step": 2}]
    assert read_jsonl(str(tmp_path / "missing.jsonl")) == []


def test_logs_and_result_round_trip(tmp_path):
    run = str(tmp_path / "run")
    write_metrics(run, [{"stage": "ft", "step": 2, "loss": 0.5}])
    assert read_metrics(run) == [{"loss": 0.5, "stage": "ft", "step": 2}]
    for step, dice in ((200, 0.2), (100, 0.1), (200, 0.25)):
        append_validation_row(run, {"ft_step": step, "val_dice": dice})
    assert [(r["ft_step"], r["val_dice"]) for r in read_validation_log(run)] == [(100, 0.1), (200, 0.25)]
    announce(run, "stage ft: steps 1..4")
    announce(run, "stage ft: steps 3..4")
    assert [row["text"] for row in read_announcements(run)] == ["stage ft: steps 1..4", "stage ft: steps 3..4"]
    assert len((tmp_path / "run" / ANNOUNCEMENTS_LOG).read_text().splitlines()) == 2
    assert read_result(run) is None
    write_result(run, {"stage": "ft", "step": 4})
    assert read_result(run) == {"stage": "ft", "step": 4}
