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


# ---------------------------------------------------------------- exit codes and --debug
import action_ray.cli as cli  # noqa: E402
from action_ray.errors import ConfigError  # noqa: E402


class _Verb:
    """A stand-in verb module whose run raises the given error (the dispatcher is under test)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.__doc__ = "stand-in verb"

    def configure(self, parser) -> None:
        parser.add_argument("overrides", nargs="*")

    def run(self, args) -> int:
        raise self.error


@pytest.fixture
def verb(monkeypatch):
    def install(error: BaseException) -> None:
        monkeypatch.setattr(cli, "_load", lambda name: _Verb(error) if name == "action_ray.commands.demo" else None)
    monkeypatch.delenv("ACTION_RAY_DEBUG", raising=False)
    return install


def test_a_user_error_is_one_line_with_exit_2(verb, capsys):
    verb(ConfigError("train.seed: expected an integer"))
    assert cli.main(["demo"]) == 2
    err = capsys.readouterr().err
    assert err == "action-ray demo: error: train.seed: expected an integer\n"


def test_a_missing_input_path_is_a_user_error_naming_the_path(verb, capsys, tmp_path):
    missing = tmp_path / "scan.nii.gz"
    verb(FileNotFoundError(2, "No such file or directory", str(missing)))
    assert cli.main(["demo"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(missing) in err and "Traceback" not in err


def test_an_internal_error_is_one_line_with_exit_1_and_the_traceback_only_with_debug(verb, capsys, monkeypatch):
    verb(RuntimeError("boom\nsecond line"))
    assert cli.main(["demo"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "internal error: RuntimeError: boom" in err and "--debug" in err and "Traceback" not in err
    assert cli.main(["demo", "--debug"]) == 1  # accepted after the verb
    assert "Traceback (most recent call last)" in capsys.readouterr().err
    monkeypatch.setenv("ACTION_RAY_DEBUG", "1")
    assert cli.main(["demo"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_error_messages_are_redacted(verb, capsys, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value-xyz")
    verb(ConfigError("cannot open s3://AKIAUSER:pw-123456@bucket/store with s3cr3t-value-xyz"))
    assert cli.main(["demo", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "pw-123456" not in err and "s3cr3t-value-xyz" not in err and "s3://***@bucket" in err
