"""`action-ray bench scale`: the per-worker measurement in-process on one rank (no Ray), and the
ring model's arithmetic."""

from __future__ import annotations

import pytest

from action_ray.bench.scale import format_table, scale_worker
from action_ray.bench.scale_model import ring_allgather_s, ring_allreduce_s
from action_ray.config import load_config

TINY = ["data.slice_size=32", "model.cut_size=16", "model.cut_stride=8", "model.local_pooling=4",
        "ft.num_queries=8", "ft.num_negatives=16"]


@pytest.mark.parametrize(("stage", "banks"), [("p2", {"global_bank", "local_bank"}), ("ft", {"pixel_bank"})])
def test_scale_worker_times_every_collective_of_a_real_step(stage, banks):
    config = load_config("cpu-demo", [*TINY, "ft.anco_negatives=bank"])
    out = scale_worker({"config": config.to_dict(), "stage": stage, "steps": 2, "warmup": 1})
    parts = {"grad_allreduce", *banks}
    assert parts <= set(out) and all(0 < out[p] < out["step_s"] for p in parts)
    assert out["peer_wait"] < 0.01  # one rank: no barrier, nobody to wait for
    lines = format_table(stage, [(1, out), (2, {**out, "step_s": 2 * out["step_s"]})])
    assert lines[1].split()[-1] == "100.0%" and lines[2].split()[-1] == "50.0%"  # step(1) / step(N)


def test_ring_costs():
    assert ring_allreduce_s(8e6, 1, 1e9) == 0 and ring_allgather_s(1e6, 1, 1e9) == 0
    # 2 (N-1)/N · S/β + 2 (N-1) α and (N-1) · s/β + (N-1) α
    assert ring_allreduce_s(8e6, 4, 1e9, alpha=0) == pytest.approx(2 * 3 / 4 * 8e-3)
    assert ring_allgather_s(1e6, 4, 1e9, alpha=1e-5) == pytest.approx(3e-3 + 3e-5)
