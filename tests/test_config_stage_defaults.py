"""A partial stage block keeps that stage's own defaults (FT: Nesterov, §4.6).

Before the fix, ``schedule.ft: {iterations: 100}`` (cpu-demo) or ``schedule.ft.iterations=5``
built a fresh StageConfig and silently trained FT without Nesterov.
"""

from __future__ import annotations

import pytest

from action_ray.config import Config, config_from_dict, load_config
from action_ray.errors import ConfigError


def test_cpu_demo_keeps_nesterov_in_ft_only():
    config = load_config("cpu-demo")
    assert config.schedule.ft.iterations != Config().schedule.ft.iterations, "preset sets ft"
    assert config.schedule.ft.nesterov is True
    assert config.schedule.p1.nesterov is False and config.schedule.p2.nesterov is False


@pytest.mark.parametrize("source", [None, "cpu-demo", "acdc-2d"])
def test_an_override_of_one_ft_key_keeps_nesterov(source):
    config = load_config(source, ["schedule.ft.iterations=5", "schedule.p1.iterations=7"])
    assert config.schedule.ft.iterations == 5 and config.schedule.ft.nesterov is True
    assert config.schedule.p1.iterations == 7 and config.schedule.p1.nesterov is False


def test_explicit_values_still_win_and_round_trip():
    config = load_config(None, ["schedule.ft.nesterov=false", "schedule.p2.nesterov=true"])
    assert config.schedule.ft.nesterov is False and config.schedule.p2.nesterov is True
    again = config_from_dict(config.to_dict())
    assert again.schedule == config.schedule


def test_partial_dict_and_empty_block():
    config = config_from_dict({"schedule": {"ft": {"lr": 0.02}, "p2": None}})
    assert config.schedule.ft.lr == 0.02 and config.schedule.ft.nesterov is True
    assert config.schedule.p2 == Config().schedule.p2


def test_momentum_zero_in_ft_asks_for_nesterov_off():
    with pytest.raises(ConfigError, match="set nesterov=false together with momentum=0"):
        load_config(None, ["schedule.ft.momentum=0"])
    assert load_config(None, ["schedule.ft.momentum=0", "schedule.ft.nesterov=false"]).schedule.ft.momentum == 0
