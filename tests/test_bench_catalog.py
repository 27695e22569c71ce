"""`action-ray bench catalog`: per-case cost of listing, info and the read plan, from real stores."""

from __future__ import annotations

import pytest

from action_ray.cli import EXIT_USER_ERROR, main
from action_ray.store import open_store


def table_rows(out: str) -> dict[tuple[int, str], list[str]]:
    """(cases, step) -> the row's other fields, for every measured row of the table."""
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 8 and parts[0].isdigit() and parts[1] in ("list", "info", "plan"):
            rows[(int(parts[0]), parts[1])] = parts[2:]
    return rows


def run_bench(tmp_path, capsys, steps: str) -> tuple[str, dict]:
    assert main(["bench", "catalog", "--cases", "20,60", "--steps", steps, "--repeat", "1", "--writers", "2",
                 "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    return out, table_rows(out)


def check_rows(out: str, rows: dict, steps: tuple[str, ...]) -> None:
    assert "2 slices of 16x16" in out
    assert "cases  step    seconds   ms/case  RSS before MB  peak RSS MB  note" in out
    assert set(rows) == {(n, step) for n in (20, 60) for step in steps}
    for (n, step), (seconds, ms_per_case, rss_before, peak, *note) in rows.items():
        assert float(seconds) > 0 and float(ms_per_case) * n / 1000 == pytest.approx(float(seconds), abs=6e-4)
        assert 10 < float(rss_before) <= float(peak)
        if step != "plan":
            assert note == [str(n), "cases"]  # every case of the store was listed / summarised
    for step in steps:
        assert f"per-case time {step}: 60/20 cases = " in out


def test_bench_catalog_lists_and_summarises_stores_of_each_size(tmp_path, capsys):
    out, rows = run_bench(tmp_path, capsys, "list,info")
    check_rows(out, rows, ("list", "info"))
    assert out.count("store built in") == 2
    # the stores were written by the store's own writer and indexed as ingest leaves them
    store = open_store(str(tmp_path / "catalog-60-2x16.zarr"))
    assert len(store.list_cases()) == 60 and (tmp_path / "catalog-60-2x16.zarr" / "index.json").exists()
    assert {c.split for c in store.list_cases()} == {"train", "val", "test"}
    out, _ = run_bench(tmp_path, capsys, "list")
    assert out.count("store reused") == 2  # the workdir keeps the built stores


@pytest.mark.slow  # starts a local Ray per size: Ray Data builds no Dataset without one
def test_bench_catalog_plans_the_training_read(tmp_path, capsys):
    out, rows = run_bench(tmp_path, capsys, "list,info,plan")
    check_rows(out, rows, ("list", "info", "plan"))
    for n in (20, 60):
        tasks = rows[(n, "plan")][4:]
        assert tasks[1:] == ["read", "tasks"] and int(tasks[0]) > 0


def test_bench_catalog_rejects_bad_arguments(tmp_path, capsys):
    for argv, complaint in ((["--cases", "5"], "at least 20"), (["--cases", "20,x"], "comma-separated"),
                            (["--steps", "list,nope"], "choose from list,info,plan"), (["--repeat", "0"], "--repeat")):
        assert main(["bench", "catalog", *argv, "--workdir", str(tmp_path)]) == EXIT_USER_ERROR
        assert complaint in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing was built
