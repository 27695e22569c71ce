"""`action-ray bench ingest`: the table it prints comes from real runs of the limit and of ingest."""

from __future__ import annotations

import pytest

from action_ray.cli import main
from action_ray.store import open_store


@pytest.mark.slow
def test_bench_ingest_prints_speed_vs_raw_and_peak_rss_per_collection_size(tmp_path, capsys):
    work = tmp_path / "work"
    assert main(["bench", "ingest", "--cases", "2,3", "--size", "32", "--slices", "4", "--workers", "1",
                 "--modes", "raw,threads", "--workdir", str(work)]) == 0
    out = capsys.readouterr().out
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] in ("2", "3"):
            name = " ".join(parts[1:3])
            mb_in, seconds, speed, ratio, rss = (float(v) for v in parts[3:8])
            rows[(int(parts[0]), name)] = (mb_in, seconds, speed, ratio, rss)
    assert set(rows) == {(n, mode) for n in (2, 3) for mode in ("raw (limit)", "ingest threads")}
    for (n, mode), (_, seconds, speed, ratio, rss) in rows.items():
        assert seconds > 0 and speed > 0 and rss > 10
        if mode == "raw (limit)":
            assert ratio == 1.0
    assert "peak RSS threads: largest/smallest collection =" in out
    # what was timed really is an ingest of every volume (and the limit really wrote every array)
    assert len(open_store(str(work / "out-threads-3")).list_cases()) == 3
    assert len(list((work / "out-raw-3").glob("*.npy"))) == 6  # 3 images + 3 labels
