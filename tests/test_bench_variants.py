"""``bench variants``: in-process training of variants over draws, scored on the val split."""

from __future__ import annotations

import argparse
import json
import os
import shlex

import numpy as np
import pytest

from action_ray.bench.variants import RunSpec, configure, parse_variant, run, train_variant, variants_table
from action_ray.errors import ConfigError
from action_ray.store import CaseMeta, create_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ("data.slice_size=32", "data.crop_size=16", "model.cut_size=8", "model.cut_stride=4",
        "model.local_pooling=2", "model.widths=[4, 8, 8, 16, 16]", "model.global_hidden=16",
        "model.global_dim=16", "model.representation_dim=8", "ft.num_queries=8", "ft.num_negatives=16",
        "schedule.p1.iterations=3", "schedule.p2.iterations=3", "schedule.ft.iterations=4")


@pytest.fixture(scope="module")
def store_url(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("variants") / "store.zarr")
    store = create_store(url, name="tiny", modality="MR", layout="folder",
                         classes={0: "background", 1: "a", 2: "b"})
    rng = np.random.default_rng(0)
    for i, split in enumerate(["train"] * 4 + ["val"]):
        label = np.zeros((4, 32, 32), np.uint8)
        label[:, 8:20, 10:22] = 1
        label[:, 12:16, 14:18] = 2
        image = (label * 40 + rng.normal(100, 10, label.shape)).astype(np.float32)
        meta = CaseMeta(f"case{i}", f"patient{i}", split, (5.0, 1.0, 1.0), np.eye(4).tolist(), {"image": "x"})
        store.write_case(meta, image, label)
    return url


def test_parse_variant():
    assert parse_variant('ema=distill.teacher_head=ema "ft.unsup_rampup=0"') == (
        "ema", ("distill.teacher_head=ema", "ft.unsup_rampup=0"))
    assert parse_variant("preset") == ("preset", ())
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_variant("bad=notakey")
    with pytest.raises(ConfigError, match="name"):
        parse_variant("a b=x=1")


def test_a_run_is_repeatable_and_scores_every_asked_step(store_url):
    spec = RunSpec("action", 0, "cpu-quality", store_url, TINY, (2, 4))
    first, second = train_variant(spec), train_variant(spec)
    assert sorted(first["curve"]) == ["2", "4"] and len(first["curve"]["4"]) == 2  # two foreground classes
    assert first["curve"] == second["curve"] and first["p2_student"] == second["p2_student"]
    other = train_variant(RunSpec("action", 1, "cpu-quality", store_url, TINY, (2, 4)))
    assert other["curve"] != first["curve"]  # another draw is another run
    table = variants_table([first, other], ["action"])
    assert "| action | 2 |" in table and "FT 4" in table


def test_the_command_writes_one_json_per_run_and_resumes(store_url, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    configure(parser)
    out = str(tmp_path / "out")
    variant = "sup=method=supervised " + shlex.join(TINY)
    args = parser.parse_args(["--store", store_url, "--variant", variant, "--draws", "0",
                              "--eval-at", "4", "--jobs", "1", "--out", out])
    assert run(args) == 0
    saved = json.load(open(os.path.join(out, "sup--draw0.json")))
    assert saved["variant"] == "sup" and "4" in saved["curve"] and "p2_student" not in saved
    assert os.path.exists(os.path.join(out, "variants.md"))
    capsys.readouterr()
    assert run(args) == 0
    assert "1 already done" in capsys.readouterr().out
    bad = parser.parse_args(["--store", store_url, "--variant", "x=data.nope=1", "--out", out])
    with pytest.raises(ConfigError, match="nope"):
        run(bad)


def test_ft_only_variants_share_p2_with_the_same_result(store_url, tmp_path):
    cache = str(tmp_path / "p2-cache")
    trained = train_variant(RunSpec("base", 0, "cpu-quality", store_url, TINY, (4,), cache))
    assert "p2_from_cache" not in trained and len(os.listdir(cache)) == 1
    strict = TINY + ("ft.strong_threshold=0.99",)
    reused = train_variant(RunSpec("strict", 0, "cpu-quality", store_url, strict, (4,), cache))
    fresh = train_variant(RunSpec("strict", 0, "cpu-quality", store_url, strict, (4,)))
    assert reused.get("p2_from_cache") and "p2_from_cache" not in fresh
    assert reused["curve"] == fresh["curve"] and reused["p2_student"] == fresh["p2_student"]
    other = train_variant(RunSpec("p2", 0, "cpu-quality", store_url, TINY + ("distill.bank_batches=2",), (4,), cache))
    assert "p2_from_cache" not in other and len(os.listdir(cache)) == 2  # a P2 setting: its own P2
