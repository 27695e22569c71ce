"""Sweep files: loading, overrides, domains, per-trial configs (no Ray cluster needed)."""

from __future__ import annotations

import pytest
import yaml

from action_ray.config import load_config
from action_ray.errors import ConfigError
from action_ray.tuning.space import (
    check_trials,
    load_sweep,
    sweep_name,
    to_tune_domain,
    trial_config,
    trial_overrides,
)


def write(tmp_path, tree) -> str:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def test_preset_grid_covers_methods_ratios_and_draws():
    sweep = load_sweep("tune-cpu", ["data.store=/nowhere"])
    combos = check_trials(sweep, sweep.base_config())
    assert len(combos) == 12  # 3 methods x 2 label ratios x 2 draws
    assert {c["method"] for c in combos} == {"supervised", "mean_teacher", "action"}
    assert all(c["train.seed"] == c["data.split_seed"] for c in combos)
    assert sweep_name(sweep) == "sweep-tune-cpu"


def test_trial_config_applies_params_and_resets_stages_for_the_method():
    base = load_config("cpu-demo", ["data.store=/s"]).to_dict()
    assert base["stages"] == ["p1", "p2", "ft"]
    cfg = trial_config(base, {"method": "supervised", "draw": {"train.seed": 7, "data.split_seed": 3},
                              "data.labelled_patients": 2}, **{"train.run_name": "t1"})
    assert cfg.method == "supervised" and cfg.stages == ["ft"]
    assert (cfg.train.seed, cfg.data.split_seed, cfg.train.run_name) == (7, 3, "t1")
    # the exclusive pair: setting labelled patients clears the preset's label_ratio
    assert cfg.data.labelled_patients == 2 and cfg.data.label_ratio is None
    # the base itself is not modified
    assert base["method"] == "action" and base["data"]["label_ratio"] == 0.1


def test_temperature_and_bank_keys_reach_the_config():
    base = load_config("cpu-demo").to_dict()
    cfg = trial_config(base, {"distill.student_temperature": 0.2, "distill.teacher_temperature": 0.02,
                              "ft.anco_temperature": 0.3, "distill.bank_batches": 12})
    assert (cfg.distill.student_temperature, cfg.distill.teacher_temperature) == (0.2, 0.02)
    assert cfg.ft.anco_temperature == 0.3 and cfg.distill.bank_batches == 12


def test_cli_overrides_split_between_sweep_and_training(tmp_path):
    path = write(tmp_path, {"base": "cpu-demo", "space": {"method": {"grid_search": ["action"]}}})
    sweep = load_sweep(path, ["tune.max_concurrent_trials=3", "space.data.label_ratio={choice: [0.1, 0.2]}",
                              "schedule.ft.iterations=7", "data.store=/x"])
    assert sweep.tune.max_concurrent_trials == 3
    assert sweep.space["data.label_ratio"] == {"choice": [0.1, 0.2]}
    base = sweep.base_config()
    assert base.stage("ft").iterations == 7 and base.data.store == "/x"


def test_domains_become_ray_tune_domains():
    from ray.tune.search.sample import Categorical, Float, Integer

    assert to_tune_domain({"grid_search": [1, 2]}) == {"grid_search": [1, 2]}
    assert isinstance(to_tune_domain({"choice": ["a", "b"]}), Categorical)
    log = to_tune_domain({"loguniform": [0.001, 0.1]})
    assert isinstance(log, Float) and (log.lower, log.upper) == (0.001, 0.1)
    assert isinstance(to_tune_domain({"randint": [1, 5]}), Integer)
    assert to_tune_domain(0.5) == 0.5


@pytest.mark.parametrize("space, message", [
    ({"distill.teacher_temperature": {"loguniform": [0, 1]}}, "low > 0"),
    ({"ft.anco_temperature": {"uniform": [1.0, 0.5]}}, "low < high"),
    ({"method": {"grid_search": []}}, "non-empty list"),
    ({}, "space is empty"),
])
def test_bad_domains_name_the_key(tmp_path, space, message):
    with pytest.raises(ConfigError, match=message):
        load_sweep(write(tmp_path, {"base": "cpu-demo", "space": space}))


def test_bad_trial_values_fail_before_any_ray_work(tmp_path):
    sweep = load_sweep(write(tmp_path, {"base": "cpu-demo", "space": {
        "data.label_ratio": {"grid_search": [0.1, 1.5]}}}))
    with pytest.raises(ConfigError, match="data.label_ratio"):
        check_trials(sweep, sweep.base_config())


def test_a_training_config_is_not_a_sweep():
    with pytest.raises(ConfigError, match="no 'space' section"):
        load_sweep("cpu-demo")


def test_one_key_set_twice_in_a_trial_is_an_error():
    with pytest.raises(ConfigError, match="train.seed twice"):
        trial_overrides({"train.seed": 1, "draw": {"train.seed": 2}})


def test_trial_resources_and_default_concurrency():
    from action_ray.tuning.driver import TrialResources

    cpu = TrialResources.of(load_config("cpu-demo"), 0.01)  # 2 workers x 0.5 CPU
    assert cpu.cpus == pytest.approx(1.01) and cpu.worker_gpus == 0
    assert cpu.concurrency(cpus=2, gpus=0) == 1 and cpu.concurrency(cpus=4, gpus=0) == 2
    gpu = TrialResources.of(load_config("acdc-2d", ["train.gpus_per_worker=0.5"]), 0.01)
    assert gpu.worker_gpus == 0.5
    assert gpu.concurrency(cpus=16, gpus=1) == 2  # two trials share a GPU
    assert gpu.concurrency(cpus=4, gpus=8) == 1   # CPUs bound: 2.01 each, one CPU kept for reads
