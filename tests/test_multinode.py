"""The Ray paths on a cluster of three nodes on this machine (head + workers ``a`` and ``b``).

The head has no CPUs, so every task and worker runs on ``a`` or ``b``; what each test checks is
that the work really is spread over both nodes and that the results are what one node gives.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from action_ray.runs.logs import read_metrics, read_result
from niftis import write_acdc
from tests.ray_cluster import LocalRayCluster
from tests.test_train_ray import make_tiny_store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(s3_server):
    # the nodes see the S3 server's AWS_* variables, as cloud nodes see their instance role
    started = LocalRayCluster(extra_env=s3_server.env)
    try:
        started.start(num_cpus=0)
        # 2 CPUs: a 0.5-CPU Train worker and Ray Data's read tasks; one "slot" for the tune test
        started.add_node("a", num_cpus=2, resources={"slot": 1})
        started.add_node("b", num_cpus=2, resources={"slot": 1})
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


TINY_ACTION = ["--config", "cpu-demo", "stages=[p2,ft]", "data.slice_size=32", "data.labelled_patients=1",
               "data.ft_labelled_batch=2", "data.ft_unlabelled_batch=2", "model.global_hidden=64",
               "model.global_dim=64", "model.representation_dim=32", "model.local_pooling=4", "model.cut_size=16",
               "model.cut_stride=8", "ft.num_queries=8", "ft.num_negatives=16", "train.num_workers=2",
               "train.cpus_per_worker=0.5", "train.collective_timeout_s=120", "eval.val_every=0"]


def test_training_puts_one_worker_per_node_with_identical_replicas_and_runs_on_s3(cluster, s3_env, tmp_path):
    ids = connected_node_ids(cluster)
    store = str(tmp_path / "store.zarr")
    make_tiny_store(store)
    storage = f"s3://{s3_env.new_bucket('spread')}/runs"
    done = subprocess.run(
        [sys.executable, "-m", "action_ray.cli", "train", *TINY_ACTION, f"data.store={store}",
         f"train.storage_path={storage}", "train.run_name=spread", "train.placement_strategy=STRICT_SPREAD",
         "schedule.p2.iterations=4", "schedule.ft.iterations=4", "train.report_every=2", "train.checkpoint_every=2"],
        env=cluster.env, capture_output=True, text=True, timeout=480)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run_dir = f"{storage}/spread"
    rows = read_metrics(run_dir)
    assert [(r["stage"], r["step"]) for r in rows] == [("p2", 2), ("p2", 4), ("ft", 2), ("ft", 4)]
    for row in rows:  # both ranks hold the same weights and banks at every report...
        assert row["replicas_identical"], row
        ranks = row["nodes"].split(",")  # ...while running on different nodes
        assert len(ranks) == 2 and set(ranks) == {ids["a"][:12], ids["b"][:12]}, (row["nodes"], ids)
    assert read_result(run_dir)["step"] == 4


def test_a_sweep_runs_its_two_concurrent_trials_on_different_nodes(cluster, tmp_path):
    """Each trial's worker asks for the one ``slot`` a node has (``train.worker_resources``), so
    two trials at once can only run on the two nodes; each trial records where it ran."""
    from tests.test_tune_sweep import make_tune_store

    ids = connected_node_ids(cluster)
    store = str(tmp_path / "store.zarr")
    make_tune_store(store)
    done = subprocess.run(
        [sys.executable, "-m", "action_ray.cli", "tune", "--config", "tune-cpu", f"data.store={store}",
         f"tune.storage_path={tmp_path / 'sweeps'}", "tune.name=spread", "tune.scheduler=fifo",
         "tune.max_concurrent_trials=2", "space.method={grid_search: [supervised]}",
         "space.data.label_ratio=1.0",
         "space.draw={grid_search: [{train.seed: 0, data.split_seed: 0}, {train.seed: 1, data.split_seed: 1}]}",
         "data.slice_size=32", "schedule.ft.iterations=20", "train.report_every=10", "train.checkpoint_every=10",
         "train.worker_resources={slot: 1}", "train.cpus_per_worker=0.5"],
        env=cluster.env, capture_output=True, text=True, timeout=480)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = sorted((tmp_path / "sweeps" / "spread" / "runs").iterdir())
    assert len(runs) == 2
    where = [read_metrics(str(run))[-1]["nodes"] for run in runs]
    assert sorted(where) == sorted([ids["a"][:12], ids["b"][:12]]), (where, ids)


def test_losing_a_node_mid_run_restarts_on_the_other_from_the_s3_checkpoint(cluster, s3_env, tmp_path):
    """It kills node ``a`` (only the ingest test, which brings its own node, runs after it). Ray Train starts a new worker group on ``b``
    from the last checkpoint in the bucket; the log holds every report step once."""
    import re
    import time

    import fsspec

    ids = connected_node_ids(cluster)
    store = str(tmp_path / "store.zarr")
    make_tiny_store(store)
    bucket = s3_env.new_bucket("lost")
    storage = f"s3://{bucket}/runs"
    iterations, report, every = 60, 10, 20
    proc = subprocess.Popen(
        [sys.executable, "-m", "action_ray.cli", "train", *TINY_ACTION, "stages=[ft]", "method=supervised",
         f"data.store={store}", f"train.storage_path={storage}", "train.run_name=lost",
         "train.placement_strategy=SPREAD", "train.max_failures=3", f"schedule.ft.iterations={iterations}",
         f"train.report_every={report}", f"train.checkpoint_every={every}"],
        env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    fs = fsspec.filesystem("s3", **s3_env.storage_options)
    snapshot = f"{bucket}/runs/lost/checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + 240
    while not fs.exists(snapshot) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
        fs.invalidate_cache()
    assert proc.poll() is None, "the run ended before its first checkpoint: make it longer"
    before = [json.loads(line)["step"] for line in fs.cat(f"{bucket}/runs/lost/metrics.jsonl").decode().splitlines()]
    cluster.kill_node("a")
    output, _ = proc.communicate(timeout=420)
    assert proc.returncode == 0, output[-4000:]
    assert before[-1] < iterations, "the node was lost after the run had finished"
    run_dir = f"{storage}/lost"
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(report, iterations + 1, report))  # none missing, none twice
    # each node's log monitor forwards the shared session logs here, so lines repeat: keep each once
    # (a restart tried before the GCS has declared the node dead may fail once more: max_failures=3)
    starts = list(dict.fromkeys(int(m) for m in re.findall(r"stage ft: steps (\d+)\.\.", output)))
    assert len(starts) >= 2 and starts[0] == 1, (starts, output[-4000:])  # at least one restart
    restarted_from = starts[-1] - 1
    assert restarted_from % every == 0 and restarted_from >= every
    # what was lost: the steps since that checkpoint, never more than checkpoint_every plus the
    # report window in flight when the node went (the last report before the kill was at before[-1])
    assert before[-1] - restarted_from <= every + report
    after_restart = [r for r in rows if r["step"] > restarted_from]
    assert after_restart and all(r["nodes"] == f"{ids['b'][:12]},{ids['b'][:12]}" for r in after_restart)
    assert read_result(run_dir)["step"] == iterations


#: On the node started with it, every worker stalls when it opens a source scan, after leaving a
#: file that says so: the node's cases are surely in flight when the test kills it.
STALLED_READS_HOOK = '''
import builtins, os, time

_FLAGS = os.environ.get("ACTION_RAY_TEST_STALL_SCANS")
if _FLAGS:
    _open = builtins.open

    def _stalled_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file).endswith(".nii.gz") and "r" in mode:
            with _open(os.path.join(_FLAGS, f"stalled-{os.getpid()}"), "w"):
                pass
            time.sleep(3600)
        return _open(file, mode, *args, **kwargs)

    builtins.open = _stalled_open
'''


def test_ingest_survives_losing_a_node_with_cases_in_flight(cluster, tmp_path):
    """Last: after node ``a`` is gone, node ``c`` joins; its workers stall on reading a scan, and
    the test kills it with cases in flight. Ray retries those cases on ``b``: the ingest ends
    with every case complete and bit-exact, none half-written, and a re-run writes nothing."""
    import time

    import nibabel as nib
    import numpy as np

    from action_ray.io.nifti import from_nifti_axes
    from action_ray.store import open_store

    hooks, flags = tmp_path / "hooks", tmp_path / "flags"
    hooks.mkdir()
    flags.mkdir()
    (hooks / "sitecustomize.py").write_text(STALLED_READS_HOOK)
    cluster.add_node("c", num_cpus=2, node_env={
        "ACTION_RAY_TEST_STALL_SCANS": str(flags),
        "PYTHONPATH": ":".join(filter(None, [str(hooks), cluster.env.get("PYTHONPATH")]))})
    ids = connected_node_ids(cluster)
    assert {"b", "c"} <= set(ids)
    written = write_acdc(tmp_path / "src", 4)
    store_url, report = str(tmp_path / "s.zarr"), tmp_path / "report.jsonl"
    argv = [sys.executable, "-m", "action_ray.cli", "ingest", str(tmp_path / "src"), store_url, "--layout", "acdc",
            "--scheduler", "ray", "--no-progress", "--report", str(report)]
    proc = subprocess.Popen(argv, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while not any(flags.iterdir()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None and any(flags.iterdir()), "no case reached node c"
    cluster.kill_node("c")
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-4000:]
    assert f"{len(written)} written" in output

    store = open_store(store_url)
    assert [c.case_id for c in store.list_cases()] == sorted(w.case_id for w in written)
    assert store.incomplete_cases() == []
    for case in written:
        image, label = store.read_volume(case.case_id)
        assert np.array_equal(image, from_nifti_axes(np.asarray(nib.load(case.image).dataobj, np.float32)))
        assert np.array_equal(label, from_nifti_axes(np.asarray(nib.load(case.label).dataobj)).astype(np.uint8))
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert {r["node"] for r in rows} == {ids["b"]}  # what node c had in flight was done again on b

    again = subprocess.run(argv, env=cluster.env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and ": 0 written" in again.stdout, again.stdout[-3000:]
