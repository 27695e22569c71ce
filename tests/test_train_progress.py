"""Rank 0's progress: a Ray tqdm bar on a terminal, plain lines with an ETA elsewhere."""

from __future__ import annotations

import pytest

from action_ray.train.progress import StageProgress, format_eta, progress_mode_for_this_terminal


def test_eta_reads_as_hours_minutes_or_seconds():
    assert [format_eta(s) for s in (0, 42.4, 187, 3720, -5)] == ["0s", "42s", "3m07s", "1h02m", "0s"]


def test_lines_mode_logs_each_report_with_losses_speed_and_eta():
    lines: list[str] = []
    progress = StageProgress("lines", "p2", 0, 300, lines.append)
    progress.advance(100)
    progress.report({"loss": 0.5, "global": 0.25}, it_per_s=2.0, checkpoint=False)
    progress.advance(200)
    progress.report({"loss": 0.4, "global": 0.2}, it_per_s=4.0, checkpoint=True)
    progress.close()
    assert lines == ["[p2 100/300] loss 0.5000 global 0.2500 | 2.00 it/s | eta 1m40s",
                     "[p2 200/300] loss 0.4000 global 0.2000 | 4.00 it/s | eta 25s | checkpoint"]


def test_other_ranks_show_nothing():
    lines: list[str] = []
    progress = StageProgress("bar", "ft", 0, 10, lines.append, enabled=False)
    progress.advance(10)
    progress.report({"loss": 1.0}, it_per_s=1.0, checkpoint=False)
    progress.close()
    assert lines == []


def test_bar_mode_draws_a_bar_and_no_lines(capsys):
    lines: list[str] = []
    progress = StageProgress("bar", "ft", 5, 20, lines.append)
    progress.advance(20)
    progress.report({"loss": 0.125}, it_per_s=3.0, checkpoint=False)
    progress.close()
    shown = capsys.readouterr()
    assert lines == []
    assert "100%" in shown.err and "20/20" in shown.err and "loss 0.1250" in shown.err


@pytest.mark.parametrize(("tty", "ci", "mode"), [(True, "", "bar"), (True, "true", "lines"), (False, "", "lines")])
def test_the_driver_picks_a_bar_only_for_an_interactive_terminal(monkeypatch, tty, ci, mode):
    monkeypatch.setattr("sys.stdout.isatty", lambda: tty)
    monkeypatch.setenv("CI", ci)
    assert progress_mode_for_this_terminal() == mode
