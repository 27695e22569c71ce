"""``--resume`` on another number of workers (2 → 1 and 1 → 2): the global batch stays, the
per-worker batch follows it, the global bank keeps its size, every report step is logged once,
a repeated resume command works, a global batch that cannot be split evenly is refused before
Ray starts, and ``--resume`` of a run that does not exist is refused with its name."""

from __future__ import annotations

import pytest
import yaml

from action_ray.config import Config
from action_ray.errors import ConfigError
from action_ray.train.checkpoint import load_checkpoint
from action_ray.train.trainer import read_metrics, run_training
from tests.test_train_ray import config_for, ray_cluster, store_url  # noqa: F401 (the module's fixtures)

pytestmark = pytest.mark.slow

P2_THEN_FT = ["stages=[p2, ft]", "schedule.p2.iterations=4", "schedule.ft.iterations=4", "train.report_every=2",
              "train.checkpoint_every=2", "data.pretrain_labelled_batch=2", "data.pretrain_unlabelled_batch=2",
              "data.ft_labelled_batch=2", "data.ft_unlabelled_batch=2"]


def saved_config(run_dir: str) -> dict:
    with open(f"{run_dir}/config.yaml") as handle:
        return yaml.safe_load(handle)


@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2)])
def test_resume_on_another_worker_count_keeps_the_global_batch_and_bank(ray_cluster, store_url, tmp_path,
                                                                          before, after):
    storage, name = str(tmp_path / "runs"), f"w{before}to{after}"
    per_worker = 4 // before  # global batch 4 slices of each kind, whatever the worker count
    batches = [f"data.{k}={per_worker}" for k in ("pretrain_labelled_batch", "pretrain_unlabelled_batch",
                                                  "ft_labelled_batch", "ft_unlabelled_batch")]
    first = config_for(store_url, storage, name, *P2_THEN_FT, *batches, f"train.num_workers={before}")
    stopped = run_training(first, stop_after_steps=3, log=lambda _: None)
    assert stopped["interrupted"] and stopped["stage"] == "p2"
    bank_size = first.bank_size()
    lines: list[str] = []
    # the user changes only the worker count; the per-worker batch follows the global one
    again = config_for(store_url, storage, name, *P2_THEN_FT, *batches, f"train.num_workers={after}",
                       "train.resume=true")
    # interrupted once more, then the very same command again: config.yaml now holds the rescaled
    # batches, and the repeated command's per-worker batches are rescaled against it once more
    partial = run_training(again, stop_after_steps=2, log=lines.append)
    assert partial["interrupted"]
    done = run_training(again, log=lines.append)
    assert done["stage"] == "ft" and done["step"] == 4 and not done["interrupted"]
    assert any(f"resuming on {after} worker(s) instead of {before}" in line for line in lines), lines
    assert any(f"resuming on {after} worker(s): per-worker batches set" in line for line in lines), lines
    run_dir = f"{storage}/{name}"
    saved = saved_config(run_dir)
    assert saved["train"]["num_workers"] == after and saved["data"]["ft_labelled_batch"] == 4 // after
    rows = read_metrics(run_dir)
    assert [(r["stage"], r["step"]) for r in rows] == [("p2", 2), ("p2", 4), ("ft", 2), ("ft", 4)]
    assert len(rows[-1]["nodes"].split(",")) == after and all(r["replicas_identical"] for r in rows)
    p2 = load_checkpoint(f"{run_dir}/stages/p2")
    assert p2.train_state["banks"]["global"]["keys"].shape[0] == bank_size  # K = bank_batches × global batch


def test_a_global_batch_that_does_not_split_evenly_is_refused(ray_cluster, store_url, tmp_path):
    storage = str(tmp_path / "runs")
    odd = ["data.pretrain_labelled_batch=3", "data.pretrain_unlabelled_batch=1"]
    first = config_for(store_url, storage, "odd", *P2_THEN_FT, *odd, "train.num_workers=1")
    run_training(first, stop_after_steps=2, log=lambda _: None)
    again = config_for(store_url, storage, "odd", *P2_THEN_FT, *odd, "train.num_workers=2", "train.resume=true")
    with pytest.raises(ConfigError, match=r"data\.pretrain_labelled_batch: the global batch of 3 slices .* 2 workers"):
        run_training(again, log=lambda _: None)
    assert saved_config(f"{storage}/odd")["train"]["num_workers"] == 1  # nothing rewritten


def test_with_workers_keeps_the_hash_and_the_bank_size():
    from action_ray.config import load_config

    two = load_config("cpu-demo", ["train.num_workers=2"])
    one = two.with_workers(1)
    assert isinstance(one, Config) and one.hash() == two.hash() and one.bank_size() == two.bank_size()
    assert one.data.ft_labelled_batch == 2 * two.data.ft_labelled_batch
    assert load_config("cpu-demo", ["train.num_workers=1"]).hash() != two.hash()  # half the global batch


def test_resume_of_a_run_that_does_not_exist_is_refused_naming_it(store_url, tmp_path, capsys):
    from action_ray.cli import main

    base = ["train", "--config", "cpu-demo", f"data.store={store_url}", f"train.storage_path={tmp_path}",
            "data.slice_size=32", "--resume"]
    assert main([*base, "train.run_name=never"]) == 2
    err = capsys.readouterr().err
    assert "no run 'never'" in err and "drop --resume" in err
    assert main(base) == 2  # a derived name: the message says how to name the run instead
    assert "train.run_name=NAME" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written
