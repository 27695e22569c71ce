"""Ray Train's checkpoint uploads (pyarrow's S3 client, not our fsspec path) meet throttling and
5xx: a proxy on 127.0.0.1 in front of the moto server answers every second upload request
(PUT or POST: single, part, multipart start and completion) of a ``checkpoint_*`` object, Ray's
``checkpoint_manager_snapshot.json`` included, with 503 SlowDown or 500 InternalError; the
client's retry of a faulted request goes through. The run completes and resumes from the
bucket, and the last uploaded checkpoint loads (nothing torn)."""

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


def test_checkpoint_uploads_that_meet_503_and_500_are_retried_and_resumable(faulty_s3_for_ray, tmp_path):
    s3, proxy = faulty_s3_for_ray
    store = str(tmp_path / "store.zarr")
    make_tiny_store(store)
    storage = f"s3://{s3.new_bucket('faulty-runs')}/runs"
    cfg = config_for(store, storage, "faulty", "method=supervised", "schedule.ft.iterations=6",
                     "train.num_workers=1", "train.report_every=2", "train.checkpoint_every=2")
    stopped = run_training(cfg, stop_after_steps=3, log=lambda _: None)
    assert stopped["interrupted"] and stopped["step"] == 3
    cfg.train.resume = True
    done = run_training(cfg, log=lambda _: None)
    assert done["step"] == 6 and not done["interrupted"]
    assert [r["step"] for r in read_metrics(f"{storage}/faulty")] == [2, 4, 6]

    assert proxy.faults >= 3, f"only {proxy.faults} faults in {proxy.requests} checkpoint uploads"
    assert any("state.pt" in path for path in proxy.faulted), proxy.faulted
    latest = latest_ray_checkpoint(f"{storage}/faulty")
    kept = load_checkpoint_from(latest, storage_options=s3.storage_options)
    assert (kept.stage, kept.step) == ("ft", 6)
