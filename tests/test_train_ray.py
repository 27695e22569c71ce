"""Training inside Ray Train: global bank and weights identical on 2 workers and exact resume of
an interrupted run (contracts 4, 5). Recovery from a killed worker is tested where the worker
dies with its whole node (test_multinode.py).

One local Ray per module (fractional worker CPUs, low collective timeout), one tiny store.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from action_ray.config import load_config
from action_ray.store import CaseMeta, create_store
from action_ray.runs.checkpoint import load_checkpoint
from action_ray.runs.logs import read_metrics, read_result
from action_ray.train.trainer import run_training

pytestmark = pytest.mark.slow

SLICES = 6
TINY = [
    "data.slice_size=32", "model.cut_size=16", "model.cut_stride=8", "model.local_pooling=4",
    "data.labelled_patients=1", "ft.num_queries=8", "ft.num_negatives=16",
    "train.num_workers=2", "train.cpus_per_worker=0.5", "train.collective_timeout_s=60",
]


def make_tiny_store(url: str):
    """Four train patients (one labelled by the split) of SLICES 32x32 slices, one test case."""
    store = create_store(url, name="tiny", modality="MR", layout="folder",
                         classes={0: "background", 1: "a", 2: "b", 3: "c"})
    rng = np.random.default_rng(0)
    for i, split in enumerate(["train"] * 4 + ["test"]):
        label = np.zeros((SLICES, 32, 32), np.uint8)
        label[:, 8:24, 8:24] = 1 + i % 3
        image = (label * 50 + rng.normal(100, 10, label.shape)).astype(np.float32)
        meta = CaseMeta(f"case{i}", f"patient{i}", split, (5.0, 1.0, 1.0), np.eye(4).tolist(), {"image": "x"})
        store.write_case(meta, image, label)
    return store


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=256 * 2**20,
             log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def store_url(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("train_ray") / "store.zarr")
    make_tiny_store(url)
    return url


def config_for(store_url: str, storage: str, name: str, *extra: str):
    return load_config("cpu-demo", TINY + [f"data.store={store_url}", f"train.storage_path={storage}",
                                           f"train.run_name={name}", *extra])


# deterministic, with foreground crops: the resumed run must repeat the uninterrupted one, which
# also shows that two fresh runs of the same config repeat (the quality table relies on it)
PRETRAIN = ["stages=[p1, p2]", "schedule.p1.iterations=2", "schedule.p2.iterations=4",
            "train.report_every=1", "train.checkpoint_every=2", "train.deterministic=true",
            "data.crop_size=16", "data.crop_foreground_p=0.5", "model.cut_size=8", "model.cut_stride=8"]


def losses(rows):
    return [(r["stage"], r["step"], r["loss"]) for r in rows]


def test_two_workers_global_bank_and_exact_resume(ray_cluster, store_url, tmp_path):
    """2 workers x P1 -> P2: after every reported step both ranks hold bit-identical weights and
    banks; a run stopped one step after a checkpoint and resumed repeats the same losses."""
    storage = str(tmp_path / "runs")
    full_cfg = config_for(store_url, storage, "full", *PRETRAIN)
    summary = run_training(full_cfg, log=lambda _: None)
    assert summary["stage"] == "p2" and summary["step"] == 4 and not summary["interrupted"]
    rows = read_metrics(f"{storage}/full")
    assert [(r["stage"], r["step"]) for r in rows] == [("p1", 1), ("p1", 2)] + [("p2", s) for s in range(1, 5)]
    assert all(r["replicas_identical"] for r in rows), rows
    p2_rows = [r for r in rows if r["stage"] == "p2"]  # diagnostics on every report step of P2
    assert all(r["grad_ratio/encoder/global"] > 0 and -1 <= r["grad_cos/decoder/local"] <= 1 for r in p2_rows)
    for name in ("config.yaml", "label_split.json", "result.json", "curves.png", "stages/p1/meta.json",
                 "stages/p2/state.pt"):
        assert os.path.exists(f"{storage}/full/{name}"), name
    final = load_checkpoint(f"{storage}/full/stages/p2")
    bank = final.train_state["banks"]["global"]
    k = bank["keys"].shape[0]
    assert k == full_cfg.distill.resolved_bank_size(full_cfg.data.pretrain_batch * 2) == 6 * 4 * 2  # bank_batches x (2+2 slices) x 2 workers
    assert int(bank["ptr"]) == (4 * 4 * 2) % k  # 4 P2 steps x 4 slices x 2 workers enqueued
    assert len(final.rank_rng) == 2 and not torch.equal(final.rank_rng[0]["generator"], final.rank_rng[1]["generator"])

    cut_cfg = config_for(store_url, storage, "cut", *PRETRAIN)
    stopped = run_training(cut_cfg, stop_after_steps=5, log=lambda _: None)
    assert stopped["interrupted"] and (stopped["stage"], stopped["step"]) == ("p2", 3)
    assert read_result(f"{storage}/cut") is None
    cut_cfg.train.resume = True
    resumed = run_training(cut_cfg, log=lambda _: None)
    assert not resumed["interrupted"] and resumed["step"] == 4
    assert losses(read_metrics(f"{storage}/cut")) == losses(rows)
    assert len({r["loss"] for r in rows}) >= 4  # the losses move: this compares something
    again = run_training(cut_cfg, log=lambda _: None)  # complete: nothing more to do
    assert again["step"] == 4
