"""A run whose storage_path is s3://… (moto on 127.0.0.1): credentials and endpoint reach Ray
(pyarrow) and our own writes (fsspec) through the AWS_* variables, exported before Ray starts
so its workers inherit them (ray-notes §4); an interrupted run resumes from the bucket."""

from __future__ import annotations

import pytest

from action_ray.runs.logs import read_metrics
from action_ray.train.trainer import run_training
from tests.resume import local_ray_with_env
from tests.test_train_ray import config_for, make_tiny_store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_with_s3_env(s3_server):
    with local_ray_with_env(s3_server.env):
        yield s3_server


def test_run_directory_on_s3_and_resume_there(ray_with_s3_env, tmp_path):
    import fsspec

    s3 = ray_with_s3_env
    store = str(tmp_path / "store.zarr")
    make_tiny_store(store)
    bucket = s3.new_bucket("runs")
    storage = f"s3://{bucket}/runs"
    cfg = config_for(store, storage, "s3run", "method=supervised", "schedule.ft.iterations=4",
                     "train.num_workers=1", "train.report_every=2", "train.checkpoint_every=2")
    stopped = run_training(cfg, stop_after_steps=3, log=lambda _: None)
    assert stopped["interrupted"] and stopped["step"] == 3
    cfg.train.resume = True
    done = run_training(cfg, log=lambda _: None)
    assert done["step"] == 4 and not done["interrupted"]
    fs = fsspec.filesystem("s3", **s3.storage_options)
    names = {path.split(f"{bucket}/runs/s3run/", 1)[1] for path in fs.find(f"{bucket}/runs/s3run")}
    for name in ("config.yaml", "label_split.json", "metrics.jsonl", "result.json", "stages/ft/meta.json"):
        assert name in names, sorted(names)
    assert any(n.startswith("checkpoint_") and n.endswith("/state.pt") for n in names), sorted(names)
    rows = read_metrics(f"{storage}/s3run")
    assert [r["step"] for r in rows] == [2, 4]  # resumed from step 2: no step reported twice
    assert s3.secret_key not in fs.cat(f"{bucket}/runs/s3run/config.yaml").decode()
