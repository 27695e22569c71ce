"""The Ray paths on a cluster of three nodes on this machine (head + workers ``a`` and ``b``).

The head has no CPUs, so every task and worker runs on ``a`` or ``b``; what each test checks is
that the work really is spread over both nodes and that the results are what one node gives.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from niftis import write_acdc
from tests.ray_cluster import LocalRayCluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    started = LocalRayCluster()
    try:
        started.start(num_cpus=0)
        started.add_node("a", num_cpus=1)
        started.add_node("b", num_cpus=1)
        yield started
    finally:
        started.stop()
    assert not started.processes()


def connected_node_ids(cluster: LocalRayCluster) -> dict[str, str]:
    import ray

    ray.init(address=cluster.address, configure_logging=False, log_to_driver=False)
    try:
        return cluster.node_ids()
    finally:
        ray.shutdown()


def test_ingest_on_the_cluster_runs_cases_on_both_nodes(cluster, tmp_path):
    ids = connected_node_ids(cluster)
    assert set(ids) == {"head", "a", "b"}
    written = write_acdc(tmp_path / "src", 4)
    report = tmp_path / "report.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "action_ray.cli", "ingest", str(tmp_path / "src"), str(tmp_path / "s.zarr"),
         "--layout", "acdc", "--scheduler", "ray", "--no-progress", "--report", str(report)],
        env=cluster.env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"connecting to the Ray cluster at {cluster.address}" in done.stdout
    assert f"{len(written)} written" in done.stdout and "written per node: " in done.stdout
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert sorted(r["case_id"] for r in rows) == sorted(w.case_id for w in written)
    assert {r["node"] for r in rows} == {ids["a"], ids["b"]}  # recorded per case: both nodes worked
