"""``--resume`` on another number of workers (2 → 1 → 2): the global batch stays, the
per-worker batch follows it, the global bank keeps its size, every report step is logged once,
a repeated resume command works, a global batch that cannot be split evenly is refused before
Ray starts, and ``--resume`` of a run that does not exist is refused with its name."""

from __future__ import annotations

import pytest
import yaml

from action_ray.config import Config
from action_ray.errors import ConfigError
from action_ray.runs.checkpoint import load_checkpoint
from action_ray.runs.logs import read_metrics
from action_ray.train.trainer import run_training
from tests.test_train_ray import config_for, ray_cluster, store_url  # noqa: F401 (the module's fixtures)

pytestmark = pytest.mark.slow

P2_THEN_FT = ["stages=[p2, ft]", "schedule.p2.iterations=4", "schedule.ft.iterations=4", "train.report_every=2",
              "train.checkpoint_every=2", "data.pretrain_labelled_batch=2", "data.pretrain_unlabelled_batch=2",
              "data.ft_labelled_batch=2", "data.ft_unlabelled_batch=2"]


def saved_config(run_dir: str) -> dict:
    with open(f"{run_dir}/config.yaml") as handle:
        return yaml.safe_load(handle)


def global_batch_of_4(workers: int) -> list[str]:
    """Per-worker batches that make a global batch of 4 slices of each kind on ``workers`` workers."""
    return [f"data.{k}={4 // workers}" for k in ("pretrain_labelled_batch", "pretrain_unlabelled_batch",
                                                 "ft_labelled_batch", "ft_unlabelled_batch")]


def test_resume_on_fewer_then_more_workers_keeps_the_global_batch_and_bank(ray_cluster, store_url, tmp_path):
    """One run, three worker counts: 2 workers (stopped in P2) → ``--resume`` on 1 (stopped
    again, then the very same command once more) → ``--resume`` on 2 to the end. Every report
    step is logged once, the global batch and the bank size never change."""
    storage, name = str(tmp_path / "runs"), "elastic"
    run_dir = f"{storage}/{name}"

    def run(workers: int, stop: int | None, lines: list[str], resume: bool = True) -> dict:
        # the user changes only the worker count (the command keeps the first run's per-worker
        # batches); the per-worker batch follows the global one
        config = config_for(store_url, storage, name, *P2_THEN_FT, *global_batch_of_4(2),
                            f"train.num_workers={workers}", *(["train.resume=true"] if resume else []))
        return run_training(config, stop_after_steps=stop, log=lines.append)

    first = config_for(store_url, storage, name, *P2_THEN_FT, *global_batch_of_4(2), "train.num_workers=2")
    bank_size = first.distill.resolved_bank_size(first.data.pretrain_batch * 2)  # K of the global batch on 2 workers
    assert run(2, 3, [], resume=False)["stage"] == "p2"
    fewer: list[str] = []
    assert run(1, 2, fewer)["interrupted"]
    assert any("resuming on 1 worker(s) instead of 2: per-worker batches set" in line for line in fewer), fewer
    # the very same command again: config.yaml now holds the rescaled batches, and the command's
    # per-worker batches are rescaled against it once more
    repeated: list[str] = []
    assert run(1, 1, repeated)["interrupted"]
    assert any("resuming on 1 worker(s): per-worker batches set" in line for line in repeated), repeated
    assert saved_config(run_dir)["train"]["num_workers"] == 1 and saved_config(run_dir)["data"]["ft_labelled_batch"] == 4
    more: list[str] = []
    done = run(2, None, more)
    assert done["stage"] == "ft" and done["step"] == 4 and not done["interrupted"]
    assert any("resuming on 2 worker(s) instead of 1" in line for line in more), more
    saved = saved_config(run_dir)
    assert saved["train"]["num_workers"] == 2 and saved["data"]["ft_labelled_batch"] == 2
    rows = read_metrics(run_dir)
    assert [(r["stage"], r["step"]) for r in rows] == [("p2", 2), ("p2", 4), ("ft", 2), ("ft", 4)]
    assert [len(r["nodes"].split(",")) for r in rows] == [2, 1, 2, 2]  # the workers of each report
    assert all(r["replicas_identical"] for r in rows)
    p2 = load_checkpoint(f"{run_dir}/stages/p2")
    assert p2.train_state["banks"]["global"]["keys"].shape[0] == bank_size  # K = bank_batches × global batch


def test_a_global_batch_that_does_not_split_evenly_is_refused(tmp_path, store_url):
    """Refused before Ray starts: the run only needs to exist (its config.yaml), not to have trained."""
    from action_ray.train.trainer import plan_run

    storage = str(tmp_path / "runs")
    odd = ["data.pretrain_labelled_batch=3", "data.pretrain_unlabelled_batch=1"]
    plan_run(config_for(store_url, storage, "odd", *P2_THEN_FT, *odd, "train.num_workers=1"))
    again = config_for(store_url, storage, "odd", *P2_THEN_FT, *odd, "train.num_workers=2", "train.resume=true")
    with pytest.raises(ConfigError, match=r"data\.pretrain_labelled_batch: the global batch of 3 slices .* 2 workers"):
        run_training(again, log=lambda _: None)
    assert saved_config(f"{storage}/odd")["train"]["num_workers"] == 1  # nothing rewritten


def test_with_workers_keeps_the_hash_and_the_bank_size():
    from action_ray.config import load_config, with_workers

    two = load_config("cpu-demo", ["train.num_workers=2"])
    one = with_workers(two, 1)
    assert isinstance(one, Config) and one.hash() == two.hash()
    assert one.data.pretrain_batch * 1 == two.data.pretrain_batch * 2  # the global batch, hence K, is kept
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
