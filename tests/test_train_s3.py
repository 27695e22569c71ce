"""A run whose storage_path is s3://… (moto on 127.0.0.1): credentials and endpoint reach Ray
(pyarrow) and our own writes (fsspec) through the AWS_* variables, exported before Ray starts
so its workers inherit them (ray-notes §4); an interrupted run resumes from the bucket.

The endpoint is a proxy on 127.0.0.1 in front of the moto server that answers every second
upload request of a ``checkpoint_*`` object (PUT or POST: single, part, multipart start and
completion; Ray's ``checkpoint_manager_snapshot.json`` included) with 503 SlowDown or 500
InternalError, and lets the client's retry of a faulted request through. So the same run also
shows that Ray Train's checkpoint uploads (pyarrow's S3 client, not our fsspec path) survive
throttling and 5xx: retried, resumable, and the last checkpoint loads whole."""

from __future__ import annotations

import pytest

from action_ray.runs.checkpoint import load_checkpoint_from
from action_ray.runs.logs import read_metrics
from action_ray.runs.resolve import latest_ray_checkpoint
from action_ray.train.trainer import run_training
from tests.resume import local_ray_with_env
from tests.test_s3_faults import FaultyProxy
from tests.test_train_ray import config_for, make_tiny_store

pytestmark = pytest.mark.slow


def checkpoint_upload(method: str, path: str) -> bool:
    return method in ("PUT", "POST") and "/checkpoint_" in path


@pytest.fixture(scope="module")
def faulty_s3_for_ray(s3_server):
    """Ray started with the AWS variables pointing at the faulty proxy, so its workers (which
    upload the checkpoints) inherit them."""
    proxy = FaultyProxy(s3_server.endpoint_url, every=2, only=checkpoint_upload, retry_passes=True)
    try:
        with local_ray_with_env({**s3_server.env, "AWS_ENDPOINT_URL": proxy.endpoint_url}):
            yield s3_server, proxy
    finally:
        proxy.close()


def test_run_directory_on_s3_resumes_there_through_checkpoint_upload_faults(faulty_s3_for_ray, tmp_path):
    import fsspec

    s3, proxy = faulty_s3_for_ray
    store = str(tmp_path / "store.zarr")
    make_tiny_store(store)
    bucket = s3.new_bucket("runs")
    storage = f"s3://{bucket}/runs"
    cfg = config_for(store, storage, "s3run", "method=supervised", "schedule.ft.iterations=6",
                     "train.num_workers=1", "train.report_every=2", "train.checkpoint_every=2")
    stopped = run_training(cfg, stop_after_steps=3, log=lambda _: None)
    assert stopped["interrupted"] and stopped["step"] == 3
    cfg.train.resume = True
    done = run_training(cfg, log=lambda _: None)
    assert done["step"] == 6 and not done["interrupted"]
    fs = fsspec.filesystem("s3", **s3.storage_options)  # straight to moto, past the proxy
    names = {path.split(f"{bucket}/runs/s3run/", 1)[1] for path in fs.find(f"{bucket}/runs/s3run")}
    for name in ("config.yaml", "label_split.json", "metrics.jsonl", "result.json", "stages/ft/meta.json"):
        assert name in names, sorted(names)
    assert any(n.startswith("checkpoint_") and n.endswith("/state.pt") for n in names), sorted(names)
    rows = read_metrics(f"{storage}/s3run")
    assert [r["step"] for r in rows] == [2, 4, 6]  # resumed from step 2: no step reported twice
    assert s3.secret_key not in fs.cat(f"{bucket}/runs/s3run/config.yaml").decode()

    assert proxy.faults >= 3, f"only {proxy.faults} faults in {proxy.requests} checkpoint uploads"
    assert any("state.pt" in path for path in proxy.faulted), proxy.faulted
    kept = load_checkpoint_from(latest_ray_checkpoint(f"{storage}/s3run"), storage_options=s3.storage_options)
    assert (kept.stage, kept.step) == ("ft", 6)
