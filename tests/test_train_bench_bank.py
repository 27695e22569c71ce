"""`action-ray bench bank`'s per-worker measurement, run in-process on one rank (no Ray)."""

from __future__ import annotations

from action_ray.bench.bank import bank_worker
from action_ray.config import load_config

TINY = ["data.slice_size=32", "model.cut_size=16", "model.cut_stride=8", "model.local_pooling=4"]


def test_bank_worker_times_real_enqueues():
    config = load_config("cpu-demo", TINY)
    out = bank_worker({"config": config.to_dict(), "steps": 2, "warmup": 1})
    assert out["bank_size"] == config.distill.bank_batches * config.data.pretrain_batch  # one rank
    assert 0 < out["enqueue_s"] < out["step_s"]  # the two bank writes are part of each step
    assert out["wait_s"] < 0.01  # one rank: no barrier, nobody to wait for
