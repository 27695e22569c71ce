"""``ingest --scheduler ray``: the same per-case graph on a (local) Ray, with the same guarantees
as the thread scheduler: bit-exact cases, bad cases skipped with exit 3, re-runs are no-ops, and
every written case records the node that ran it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from action_ray.cli import main
from action_ray.ingest.runner import EXIT_SKIPPED_CASES
from action_ray.store import open_store
from niftis import expected_arrays, truncate_gzip, write_acdc

pytestmark = pytest.mark.slow


@pytest.fixture()
def no_ray_left():
    import ray

    yield
    ray.shutdown()


def test_ray_scheduler_ingests_reports_nodes_and_resumes(tmp_path, capsys, monkeypatch, no_ray_left):
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    written = write_acdc(tmp_path / "src", 3)
    truncate_gzip(written[0].image)
    dst, report = tmp_path / "s.zarr", tmp_path / "report.jsonl"
    argv = ["ingest", str(tmp_path / "src"), str(dst), "--layout", "acdc", "--scheduler", "ray",
            "--workers", "2", "--no-progress", "--report", str(report)]
    assert main(argv) == EXIT_SKIPPED_CASES
    out = capsys.readouterr().out
    assert "starting a local Ray: 2 CPUs" in out and "5 written, 0 already complete, 1 skipped" in out
    assert str(written[0].image) in out and "truncated or corrupt gzip" in out
    rows = {row["case_id"]: row for row in map(json.loads, report.read_text().splitlines())}
    node = ray.get_runtime_context().get_node_id()
    assert {r["node"] for r in rows.values() if r["status"] == "written"} == {node}
    assert rows[written[0].case_id]["status"] == "failed"
    store = open_store(str(dst))
    assert sorted(i.case_id for i in store.list_cases()) == sorted(w.case_id for w in written[1:])
    assert store.incomplete_cases() == []
    for w in written[1:3]:
        image, label = store.read_volume(w.case_id)
        np.testing.assert_array_equal(image, expected_arrays(w.image))
        np.testing.assert_array_equal(label, expected_arrays(w.label))
    # the same command again: complete cases are kept, only the bad one is read (and fails again)
    assert main(argv) == EXIT_SKIPPED_CASES
    assert "0 written, 5 already complete, 1 skipped" in capsys.readouterr().out
