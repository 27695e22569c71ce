"""`action-ray bench reads`: both store layouts are written, read back intact and timed."""

from __future__ import annotations

import pytest

from action_ray.bench import reads
from action_ray.cli import EXIT_USER_ERROR, main
from action_ray.store import open_store


def test_bench_reads_times_both_layouts_on_disk_and_s3(capsys):
    assert main(["bench", "reads", "--cases", "2", "--slices", "3", "--size", "16", "--repeat", "1", "--s3"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith(("local disk", "S3 (moto)"))
            and "=" not in line]
    assert [" ".join(r[:-2]) for r in rows] == [
        "local disk per-slice objects", "local disk sharded", "S3 (moto) per-slice objects", "S3 (moto) sharded"]
    assert all(float(r[-1]) > 0 and float(r[-2]) > 0 for r in rows)
    assert "local disk: sharded / per-slice objects = read_slice" in out
    assert "S3 (moto): sharded / per-slice objects = read_slice" in out


def test_the_two_layouts_differ_on_disk_and_read_back_the_same(tmp_path):
    volumes = reads.random_volumes(2, 3, 16)
    urls = reads.write_both(str(tmp_path), None, volumes)
    per_slice = sorted(p.name for p in (tmp_path / "per-slice" / "cases" / "case000" / "image" / "c").rglob("*")
                       if p.is_file())
    sharded = [p for p in (tmp_path / "sharded" / "cases" / "case000" / "image" / "c").rglob("*") if p.is_file()]
    assert per_slice == ["0", "0", "0"] and len(sharded) == 1  # c/<z>/0/0 per slice vs c/0/0/0
    for url in urls.values():
        assert reads.time_reads(url, None, 1, volumes)["cases"] == 2
        assert open_store(url).case("case001").stored_chunks == {"image": 3, "label": 3}


def test_bench_reads_refuses_nonsense_sizes(capsys):
    assert main(["bench", "reads", "--cases", "0"]) == EXIT_USER_ERROR
    assert "--cases" in capsys.readouterr().err


def test_a_read_that_differs_from_what_was_written_is_an_error(tmp_path):
    volumes = reads.random_volumes(1, 2, 8)
    url = reads.write_both(str(tmp_path), None, volumes)["sharded"]
    other = reads.random_volumes(2, 2, 8)[1:]
    with pytest.raises(AssertionError, match="differs"):
        reads.time_reads(url, None, 1, other)
