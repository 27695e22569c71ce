"""Command-line parsing shared by every verb (action_ray.cli)."""

from __future__ import annotations

import pytest

from action_ray.cli import build_parser, parse_command_line


def test_overrides_after_a_flag_are_kept_in_command_line_order():
    args = parse_command_line(build_parser(), ["train", "data.store=a", "--resume", "ft.x=1", "train.seed=2"])
    assert args.resume is True
    assert args.overrides == ["data.store=a", "ft.x=1", "train.seed=2"]


def test_overrides_after_flags_work_for_nested_verbs_too():
    args = parse_command_line(build_parser(), ["bench", "quality", "--profile", "smoke", "tune.name=x"])
    assert (args.profile, args.overrides) == ("smoke", ["tune.name=x"])


@pytest.mark.parametrize("tail", [["--no-such-flag"], ["stray"], ["--no-such=1"]])
def test_other_leftovers_are_still_errors(tail, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_command_line(build_parser(), ["train", "a=1", "--resume", *tail])
    assert exit_info.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_a_verb_without_overrides_rejects_key_value_leftovers(capsys):
    with pytest.raises(SystemExit):
        parse_command_line(build_parser(), ["evaluate", "run", "--store", "s", "x=1"])
    assert "x=1" in capsys.readouterr().err
