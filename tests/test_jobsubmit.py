"""``ray job submit`` of ``action-ray train`` to a cluster this test starts and stops itself.

The head (tests/ray_cluster.py) runs with its own ``--temp-dir`` and ports on 127.0.0.1, token
auth disabled for its processes, and is stopped by the PIDs of its own processes, never with
``ray stop`` (which would end every Ray process on the machine, other tests' included).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from action_ray.runs.logs import read_metrics, read_result
from tests.ray_cluster import LocalRayCluster
from tests.test_train_ray import make_tiny_store

pytestmark = pytest.mark.slow

BIN = os.path.dirname(sys.executable)
JOB_CONFIG = """\
# what the job trains: a tiny cpu-demo
stages: [p2, ft]
data: {slice_size: 32, labelled_patients: 1, ft_labelled_batch: 2, ft_unlabelled_batch: 2}
model: {preset: cpu, global_hidden: 64, global_dim: 64, representation_dim: 32, local_pooling: 4,
        cut_size: 16, cut_stride: 8}
schedule: {p2: {iterations: 3}, ft: {iterations: 3}}
ft: {num_queries: 8, num_negatives: 16}
train: {num_workers: 2, cpus_per_worker: 0.5, report_every: 1, checkpoint_every: 3,
        collective_timeout_s: 60, run_name: submitted}
"""


@pytest.fixture()
def head():
    cluster = LocalRayCluster()
    try:
        cluster.start(num_cpus=4)
        env = {k: v for k, v in cluster.env.items() if k != "RAY_ADDRESS"}
        yield f"http://127.0.0.1:{cluster.dashboard_port}", env, cluster.address, cluster.temp_dir
    finally:
        cluster.stop()
    assert not cluster.processes()


def ray_job(address: str, env: dict, *args: str, timeout: int = 120) -> str:
    verb, *rest = args
    done = subprocess.run([f"{BIN}/ray", "job", verb, "--address", address, *rest], env=env,
                          capture_output=True, text=True, timeout=timeout)
    return done.stdout + done.stderr


def submit_when_ready(address: str, env: dict, entrypoint: list[str], workdir: str, runtime_env: str,
                      deadline_s: float = 240) -> str:
    """``ray job submit --no-wait``; the head's job agent comes up a few seconds after
    ``ray start`` returns, so retry while it says so. Returns the submission id."""
    started = time.time()
    output = ""
    while time.time() - started < deadline_s:
        output = ray_job(address, env, "submit", "--no-wait", "--working-dir", workdir,
                         "--runtime-env-json", runtime_env, "--", *entrypoint)
        if "No available agent to submit job" not in output:
            match = re.search(r"raysubmit_\w+", output)
            assert match, output[-3000:]
            return match.group(0)
        time.sleep(3)
    pytest.fail(f"the head's job agent never became available in {deadline_s:.0f} s:\n{output[-2000:]}")


def head_log_tails(temp_dir: str, chars: int = 1500) -> str:
    """The ends of the head's own logs (runtime-env agent, job supervisor/driver, raylet): what a
    job stuck in PENDING leaves behind, so a CI failure explains itself."""
    wanted = ("runtime_env", "job-driver", "dashboard_agent", "raylet.out", "raylet.err", "gcs_server.err")
    parts = []
    for root, _, files in os.walk(temp_dir):
        for name in sorted(files):
            if name.startswith(wanted) or any(word in name for word in wanted):
                path = os.path.join(root, name)
                try:
                    with open(path, errors="replace") as handle:
                        text = handle.read()
                except OSError:
                    continue
                if text.strip():
                    parts.append(f"--- {name} ---\n{text[-chars:]}")
    return "\n".join(parts)


def wait_for_job(address: str, env: dict, job_id: str, deadline_s: float) -> str:
    """Poll ``ray job status`` until a terminal state or the deadline; returns the last status."""
    started = time.time()
    status = ""
    while time.time() - started < deadline_s:
        status = ray_job(address, env, "status", job_id)
        if any(word in status.upper() for word in ("SUCCEEDED", "FAILED", "STOPPED")):
            break
        time.sleep(2)
    return status


def test_ray_job_submit_trains_and_writes_the_run(head, tmp_path):
    address, env, gcs_address, temp_dir = head
    store = str(tmp_path / "store.zarr")
    make_tiny_store(store)
    storage = str(tmp_path / "runs")
    workdir = tmp_path / "job"
    workdir.mkdir()
    (workdir / "job.yaml").write_text(JOB_CONFIG)
    entrypoint = [f"{BIN}/action-ray", "train", "--config", "job.yaml", f"data.store={store}",
                  f"train.storage_path={storage}"]
    # RAY_ADDRESS for every process of the job: Ray Train's placement-group cleaner queries the
    # State API, which cannot tell clusters apart when several run on one machine (CI, laptops)
    runtime_env = json.dumps({"env_vars": {"RAY_ADDRESS": gcs_address}})
    started = time.time()
    job_id = submit_when_ready(address, env, entrypoint, str(workdir), runtime_env)
    submitted = time.time()
    # 27 s on an idle 2-core machine; the deadline leaves room for a slow, shared CI runner
    status = wait_for_job(address, env, job_id, deadline_s=600)
    logs = ray_job(address, env, "logs", job_id)
    assert "succeeded" in status.lower(), (
        f"submitted after {submitted - started:.0f} s, waited {time.time() - submitted:.0f} s\n"
        + status[-2000:] + logs[-4000:] + "\n" + head_log_tails(temp_dir))
    run_dir = f"{storage}/submitted"
    result = read_result(run_dir)
    assert result is not None and result["stage"] == "ft" and result["step"] == 3
    rows = read_metrics(run_dir)
    assert [(r["stage"], r["step"]) for r in rows] == [("p2", 1), ("p2", 2), ("p2", 3),
                                                       ("ft", 1), ("ft", 2), ("ft", 3)]
    assert os.path.exists(f"{run_dir}/stages/ft/state.pt") and os.path.exists(f"{run_dir}/config.yaml")
    assert "config " in logs and "[ft 3/3]" in logs  # the resolved config and rank-0 progress
    print(f"job round trip {time.time() - started:.1f} s")
