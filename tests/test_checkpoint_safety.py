"""Checkpoints carry no code: loaders never unpickle objects, and say so in one line.

A crafted ``state.pt`` whose unpickling would create a marker directory is given to every
loader: the checkpoint module, ``predict`` and ``evaluate`` on the command line, a local path and
``s3://`` on the moto server, and ``train.init_from`` / ``--resume`` through the checks made before
Ray starts. Each refuses it naming the file; the marker never appears.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from action_ray.runs.files import write_file
from action_ray.cli import main
from action_ray.errors import ConfigError
from action_ray.runs.checkpoint import capture_rng, convert_checkpoint, load_checkpoint, restore_rng
from action_ray.runs.layout import META_FILE, STATE_FILE
from test_evaluate import make_store, phantom, save_run, tiny_config  # tests/ is on sys.path

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Payload:
    """Unpickling this calls os.makedirs(marker): what an attacker's code would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def poison(checkpoint_dir: Path, marker: Path) -> None:
    """Replace state.pt with a pickle payload (meta.json stays, as in a tampered copy)."""
    torch.save({"format": 2, "stage": "ft", "evil": Payload(str(marker))}, str(checkpoint_dir / STATE_FILE))


@pytest.fixture()
def run_with_store(tmp_path):
    store = make_store(tmp_path / "store.zarr", {"t0": ("test", *phantom(0)), "v0": ("val", *phantom(1)),
                                                 "r0": ("train", *phantom(2)), "r1": ("train", *phantom(3))})
    run_dir = tmp_path / "run"
    checkpoint = save_run(run_dir, tiny_config(store.url))
    return store, run_dir, checkpoint


def test_rng_states_round_trip_as_plain_data():
    saved = capture_rng()
    assert isinstance(saved["python"]["state"], torch.Tensor) and isinstance(saved["numpy"]["keys"], torch.Tensor)
    first = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(2))
    restore_rng(saved)
    again = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(2))
    assert first[:4] == again[:4] and torch.equal(first[4], again[4])


def test_a_pickle_payload_is_refused_by_every_loader(run_with_store, tmp_path, capsys):
    store, run_dir, checkpoint = run_with_store
    assert load_checkpoint(str(checkpoint)).step == 7  # the honest checkpoint loads
    marker = tmp_path / "payload-ran"
    poison(checkpoint, marker)
    with pytest.raises(ConfigError, match=f"refusing to load {checkpoint / STATE_FILE}"):
        load_checkpoint(str(checkpoint))
    nifti_dir = tmp_path / "scan"
    for argv in (["predict", str(checkpoint), "--store", store.url, "--cases", "t0", "--out", str(tmp_path / "p"),
                  "--no-progress"],
                 ["evaluate", str(run_dir), "--store", store.url, "--no-progress"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "refusing to load" in err[0] and STATE_FILE in err[0], err
    assert not marker.exists() and not nifti_dir.exists()


def test_random_bytes_and_missing_files_are_messages(run_with_store):
    _, _, checkpoint = run_with_store
    for seed in range(20):  # corrupt bytes fail in many ways inside torch.load: every one is a message
        (checkpoint / STATE_FILE).write_bytes(random.Random(seed).randbytes(4096))
        with pytest.raises(ConfigError, match="not a readable checkpoint|refusing to load"):
            load_checkpoint(str(checkpoint))
    (checkpoint / STATE_FILE).unlink()
    with pytest.raises(ConfigError, match=f"has no {STATE_FILE}"):
        load_checkpoint(str(checkpoint))


def test_a_payload_on_s3_is_refused(run_with_store, tmp_path, s3_server):
    from action_ray.evaluation import predict_cases
    from action_ray.runs.checkpoint import upload_directory

    store, _, checkpoint = run_with_store
    marker = tmp_path / "payload-ran-s3"
    poison(checkpoint, marker)
    options = s3_server.storage_options
    url = f"s3://{s3_server.new_bucket('evil')}/runs/evil"
    upload_directory(str(checkpoint), url, options)
    with pytest.raises(ConfigError, match="refusing to load .*state.pt"):
        predict_cases(url, str(tmp_path / "o"), store_url=store.url, storage_options=options, progress=False)
    assert not marker.exists()


def test_init_from_and_resume_are_refused_before_ray(run_with_store, tmp_path, capsys):
    store, run_dir, checkpoint = run_with_store
    marker = tmp_path / "payload-ran-train"
    poison(checkpoint, marker)
    base = ["train", "--config", "cpu-demo", f"data.store={store.url}", "data.slice_size=32",
            f"train.storage_path={tmp_path / 'runs'}", "method=supervised", "eval.val_every=0"]
    assert main([*base, f"train.init_from={checkpoint}", "train.run_name=init"]) == 2
    assert "refusing to load" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "init").exists()  # nothing written for a refused run
    resumed = tmp_path / "runs" / "resumed"
    ray_ckpt = resumed / "checkpoint_2026-01-01_00-00-00.000000"
    shutil.copytree(checkpoint, ray_ckpt)
    # Ray resumes from the checkpoint its snapshot names (written once the upload is complete)
    (resumed / "checkpoint_manager_snapshot.json").write_text(
        json.dumps({"latest_checkpoint_result": {"checkpoint_dir_name": ray_ckpt.name}}))
    config = tiny_config(store.url, **{"method": "supervised", "eval.val_every": "0",
                                       "train.storage_path": str(tmp_path / "runs"), "train.run_name": "resumed"})
    write_file(str(resumed / "config.yaml"), config.to_yaml())
    assert main([*base, "train.run_name=resumed", "--resume"]) == 2
    assert "refusing to load" in capsys.readouterr().err
    assert not marker.exists()


def test_format_1_checkpoints_are_refused_with_the_way_to_convert(run_with_store, tmp_path, capsys):
    _, _, checkpoint = run_with_store
    payload = torch.load(str(checkpoint / STATE_FILE), weights_only=True)
    payload["format"] = 1
    for entry in payload["rank_rng"]:  # the old form: the tuples getstate() returns
        entry["python"] = random.getstate()
        entry["numpy"] = np.random.get_state()
    torch.save(payload, str(checkpoint / STATE_FILE))
    meta = json.loads((checkpoint / META_FILE).read_text())
    (checkpoint / META_FILE).write_text(json.dumps({**meta, "format": 1}))
    with pytest.raises(ConfigError, match="convert-checkpoint SRC DST --trust-pickle"):
        load_checkpoint(str(checkpoint))
    target = tmp_path / "converted"
    assert main(["convert-checkpoint", str(checkpoint), str(target)]) == 2  # the flag is required
    assert "--trust-pickle" in capsys.readouterr().err and not target.exists()
    assert main(["convert-checkpoint", str(checkpoint), str(target), "--trust-pickle"]) == 0
    converted = load_checkpoint(str(target))
    assert converted.step == 7 and isinstance(converted.rank_rng[0]["numpy"]["keys"], torch.Tensor)
    with pytest.raises(ConfigError, match="not a format-1 checkpoint"):
        convert_checkpoint(str(target), str(tmp_path / "again"))


def test_impossible_runs_fail_before_ray_and_write_nothing(run_with_store, tmp_path, capsys):
    """ACTION on a store whose train patients are all labelled: one line, exit 2, no run folder."""
    import time

    store, _, _ = run_with_store
    storage = tmp_path / "runs"
    base = ["train", "--config", "cpu-demo", f"data.store={store.url}", "data.slice_size=32",
            f"train.storage_path={storage}", "data.label_ratio=1.0"]
    started = time.perf_counter()
    assert main([*base, "method=action"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trains on unlabelled patients" in err[0] and "method=supervised" in err[0]
    assert main([*base, "method=supervised", "model.num_classes=2"]) == 2
    assert "fewer than the store's 4 classes" in capsys.readouterr().err
    assert time.perf_counter() - started < 5 and not storage.exists()


def test_dry_run_prints_the_plan_and_writes_nothing(run_with_store, tmp_path, capsys):
    store, _, _ = run_with_store
    storage = tmp_path / "runs"
    assert main(["train", "--config", "cpu-demo", f"data.store={store.url}", "data.slice_size=32",
                 f"train.storage_path={storage}", "train.run_name=plan", "--dry-run"]) == 0
    out = capsys.readouterr().out
    plan = json.loads(out[out.rindex("\n{") + 1:])
    assert plan["run_name"] == "plan" and plan["stages"] == {"p1": 100, "p2": 100, "ft": 100}
    assert plan["labelled_cases"] == 1 and plan["unlabelled_cases"] == 1 and plan["num_classes"] == 4
    assert not storage.exists()


def test_resume_checks_the_checkpoint_ray_resumes_from_not_a_half_copied_newer_one(tmp_path):
    """A driver killed while Ray copied a checkpoint leaves a newer folder with ``meta.json``
    and no weights; Ray resumes from the one its snapshot names, and so does the preflight."""
    from action_ray.runs.layout import RAY_CHECKPOINT_SNAPSHOT
    from action_ray.runs.resolve import latest_ray_checkpoint

    run = tmp_path / "run"
    assert latest_ray_checkpoint(str(run)) is None
    older, newer = run / "checkpoint_2026-12-07_10-00-00.000000", run / "checkpoint_2026-12-07_10-00-05.000000"
    for folder in (older, newer):
        folder.mkdir(parents=True)
        (folder / META_FILE).write_text("{}")
    (older / "state.pt").write_bytes(b"weights")
    assert latest_ray_checkpoint(str(run)) is None  # no snapshot: Ray registered none, starts afresh
    snapshot = {"checkpoint_results": [], "latest_checkpoint_result": {"checkpoint_dir_name": older.name}}
    (run / RAY_CHECKPOINT_SNAPSHOT).write_text(json.dumps(snapshot))
    assert latest_ray_checkpoint(str(run)) == str(older)
    (run / RAY_CHECKPOINT_SNAPSHOT).write_text("{not json")  # unreadable: no guess at a folder, no crash
    assert latest_ray_checkpoint(str(run)) is None


def test_a_store_that_lost_a_chunk_is_refused_before_ray_naming_the_case(run_with_store, tmp_path, capsys):
    """A shard (the case's slices) deleted after ingest would be read as zeros: train refuses in its preflight with
    one line naming the case and what to do, and writes nothing; data.verify_chunks=false lets
    the run through (shown with --dry-run, which never starts Ray)."""
    store, _, _ = run_with_store
    from tests.damage import delete_shard

    delete_shard(tmp_path / "store.zarr", "r1")
    storage = tmp_path / "runs"
    base = ["train", "--config", "cpu-demo", f"data.store={store.url}", "data.slice_size=32",
            f"train.storage_path={storage}", "train.run_name=lost"]
    assert main(base) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "case 'r1'" in err[0] and "where ingest wrote" in err[0], err
    assert "--overwrite" in err[0] and "data.verify_chunks=false" in err[0]
    assert not storage.exists()
    assert main([*base, "data.verify_chunks=false", "--dry-run"]) == 0
    capsys.readouterr()
