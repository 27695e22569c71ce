"""`action-ray bench ingest`: the table it prints comes from real runs of the limit and of ingest,
on a local disk and (``--s3``) on a local S3 server the benchmark starts and stops itself."""

from __future__ import annotations

import socket
import sys

import pytest

from action_ray.bench import ingest as bench_ingest
from action_ray.bench.ingest import S3Place
from action_ray.cli import EXIT_USER_ERROR, main
from action_ray.store import open_store


@pytest.mark.slow
def test_bench_ingest_prints_speed_vs_raw_and_peak_rss_per_collection_size(tmp_path, capsys):
    work = tmp_path / "work"
    assert main(["bench", "ingest", "--cases", "2,3", "--size", "32", "--slices", "4", "--workers", "1",
                 "--modes", "raw,threads", "--repeat", "2", "--workdir", str(work)]) == 0
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
    assert "peak RSS threads: largest/smallest collection =" in out and "best of 2 rounds" in out
    # what was timed really is an ingest of every volume (and the limit really wrote every array),
    # once per round, each round into a folder of its own
    for folder in ("out-threads-3", "out-threads-3-r1"):
        assert len(open_store(str(work / folder)).list_cases()) == 3
    for folder in ("out-raw-3", "out-raw-3-r1"):
        assert len(list((work / folder).glob("*.npy"))) == 6  # 3 images + 3 labels
    assert not (work / "out-raw-3-r2").exists()


def endpoint_is_up(endpoint_url: str) -> bool:
    host, port = endpoint_url.removeprefix("http://").split(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        return False
    return True


def test_bench_ingest_s3_round_trips_through_a_local_server_it_stops(tmp_path, capsys, monkeypatch):
    found, endpoints = {}, []
    done_with = S3Place.done_with

    def inspect_then_delete(place, url):  # what each run wrote, read back before it is deleted
        endpoints.append(place.env["AWS_ENDPOINT_URL"])
        assert endpoint_is_up(endpoints[-1])
        if "out-threads" in url:
            store = open_store(url, storage_options=place.storage_options)
            found[url.rsplit("/", 1)[-1]] = sorted(c.case_id for c in store.list_cases())
        else:
            found[url.rsplit("/", 1)[-1]] = len(place.fs.glob(url.removeprefix("s3://") + "/*.npy"))
        done_with(place, url)

    monkeypatch.setattr(S3Place, "done_with", inspect_then_delete)
    assert main(["bench", "ingest", "--s3", "--cases", "4", "--size", "16", "--slices", "2", "--workers", "1",
                 "--modes", "raw,threads", "--repeat", "1", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "random ACDC-layout collections of 16x16x2, S3 -> S3 on a local moto server" in out
    assert found == {"out-raw-4": 8,  # 4 images + 4 labels
                     "out-threads-4": [f"patient00{p}_frame{f}" for p in (1, 2) for f in ("01", "10")]}
    rows = [line.split() for line in out.splitlines() if line.startswith("      4")]
    assert [" ".join(r[1:3]) for r in rows] == ["raw (limit)", "ingest threads"]
    for row in rows:
        seconds, per_volume, rss = float(row[4]), float(row[-1]), float(row[-2])
        # seconds is printed to 1 ms and s/volume to 0.1 ms: both roundings stay within 1.5 ms
        assert seconds > 0 and per_volume == pytest.approx(seconds / 4, abs=1.5e-3) and rss > 10
    assert len(set(endpoints)) == 1 and not endpoint_is_up(endpoints[0])  # the server is stopped


def test_bench_ingest_s3_stops_its_server_when_a_run_fails(tmp_path, capsys, monkeypatch):
    endpoints = []

    def failing_run(mode, src, dst, workers, env=None):
        endpoints.append(env["AWS_ENDPOINT_URL"])
        raise RuntimeError("bench child raw failed")

    monkeypatch.setattr(bench_ingest, "measure", failing_run)
    assert main(["bench", "ingest", "--s3", "--cases", "2", "--size", "16", "--slices", "2",
                 "--workdir", str(tmp_path)]) != 0
    assert endpoints and not endpoint_is_up(endpoints[0])


def test_bench_ingest_s3_without_moto_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "moto.server", None)  # as if moto[server] were not installed
    assert main(["bench", "ingest", "--s3", "--cases", "2", "--workdir", str(tmp_path)]) == EXIT_USER_ERROR
    assert "pip install 'moto[server]'" in capsys.readouterr().err
