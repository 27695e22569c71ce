"""Ray Train's checkpoint uploads (pyarrow's S3 client, not our fsspec path) meet throttling and
5xx: a proxy on 127.0.0.1 in front of the moto server answers every second upload request
(PUT or POST: single, part, multipart start and completion) of a ``checkpoint_*`` object, Ray's
``checkpoint_manager_snapshot.json`` included, with 503 SlowDown or 500 InternalError; the
client's retry of a faulted request goes through. The run completes and resumes from the
bucket, and the last uploaded checkpoint loads (nothing torn)."""

from __future__ import annotations

import os

import pytest

from action_ray.runs.checkpoint import load_checkpoint_from
from action_ray.runs.logs import read_metrics
from action_ray.runs.resolve import latest_ray_checkpoint
from action_ray.train.trainer import run_training
from tests.test_s3_faults import FaultyProxy
from tests.test_train_ray import config_for, make_tiny_store

pytestmark = pytest.mark.slow


def checkpoint_upload(method: str, path: str) -> bool:
    return method in ("PUT", "POST") and "/checkpoint_" in path


@pytest.fixture(scope="module")
def faulty_s3_for_ray(s3_server):
    """Ray started with the AWS variables pointing at the faulty proxy, so its workers (which
    upload the checkpoints) inherit them."""
    import ray

    proxy = FaultyProxy(s3_server.endpoint_url, every=2, only=checkpoint_upload, retry_passes=True)
    env = {**s3_server.env, "AWS_ENDPOINT_URL": proxy.endpoint_url}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=256 * 2**20,
             log_to_driver=False, configure_logging=False)
    yield s3_server, proxy
    ray.shutdown()
    proxy.close()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


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
