"""Connecting to Ray: the one place that decides between a cluster and a local instance, and how
big a local instance must be.

Every job that runs on Ray (training, a sweep, ``ingest --scheduler ray``) goes through
:func:`connect_or_start`: with ``RAY_ADDRESS`` set it joins that cluster (``ray job submit``
sets it for the job's driver); otherwise it starts a local Ray, with the object store capped,
since action-ray streams volumes and never holds a collection in it. The sizing rules of a
local Ray for a training run (:func:`start_for_training`) and for a sweep
(:func:`start_for_sweep`) live here too, so the two cannot drift apart. This module sits below
train, tuning and ingest, which all start Ray, because their Python APIs must work without the
command line too.
"""

from __future__ import annotations

import math
import os
import socket
import sys
from typing import Callable

from action_ray.urls import redact

#: Object store cap of a local Ray started by action-ray: training streams slices, it never
#: holds the collection (Ray's default is 30 % of RAM, which a laptop cannot spare).
LOCAL_OBJECT_STORE_BYTES = 1 * 2**30

#: Environment a local Ray should see before it starts (workers inherit it).
RAY_ENV_DEFAULTS = {
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",  # otherwise each worker print appears twice
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
}

#: Ray Train's controller collects a worker's report when it polls the workers (every 2 s by
#: default), and a worker whose previous report is still uncollected blocks in
#: ``ray.train.report`` until then. A local CPU run reports every second or so, so it spent up to
#: a third of its time waiting (a 200-step cpu-demo run: 69 s at 2 s, 48 s at 0.25 s; with
#: ``train.deterministic=true`` the logged losses are identical at both). A local Ray therefore polls at 0.25 s; on a cluster, where reports are minutes
#: apart, Ray's default stays (set the variable in the cluster's environment to change it).
#: A value the user exported wins in both cases.
#: Ray Train also starts a preemption watcher actor per run, which polls whether the cluster is
#: draining a node (spot reclaim); a local machine is never drained, so a local Ray goes without
#: it (one Python process fewer per run: about 1.5 s of a 35-s tiny run on 2 cores).
LOCAL_RAY_ENV_DEFAULTS = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def connect_or_start(
    num_cpus: int, num_gpus: int | None = None, *, dashboard: bool = False,
    log: Callable[[str], None] = print, reason: str = "", worker_logs: bool = True,
) -> None:
    """Join the cluster in ``RAY_ADDRESS``, else start a local Ray with ``num_cpus`` logical
    CPUs (and ``num_gpus``); nothing happens when this process is already connected.

    ``dashboard`` starts the local dashboard (the State API that Tune's ASHA needs);
    ``reason`` is added to the start-up line so the user sees why the instance looks as it does.
    ``worker_logs=False`` keeps the output of Ray's workers and actors in the Ray session logs
    instead of this terminal (``train`` shows its progress from the run folder instead:
    :mod:`action_ray.train.follow`).
    """
    import ray

    if ray.is_initialized():
        return
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    address = os.environ.get("RAY_ADDRESS")
    if address:
        log(f"connecting to the Ray cluster at {redact(address)}")
        ray.init(address=address, log_to_driver=worker_logs)
        return
    log(f"starting a local Ray: {num_cpus} CPUs" + (f", {num_gpus} GPUs" if num_gpus else "")
        + (f" ({reason})" if reason else ""))
    for key, value in LOCAL_RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)  # before ray.init: its raylet and workers inherit it
    ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=dashboard,
             object_store_memory=LOCAL_OBJECT_STORE_BYTES, configure_logging=False, log_to_driver=worker_logs)


def current_node() -> str:
    """The Ray node id of this process when it runs inside Ray (task, actor, Train worker),
    else the host name: what reports record as "where it ran"."""
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    return socket.gethostname()


def start_for_training(num_workers: int, cpus_per_worker: float, use_gpu: bool,
                       log: Callable[[str], None] = print) -> None:
    """Connect to ``RAY_ADDRESS`` if set, else start a local Ray sized for one training run.

    Locally, Ray gets at least two more logical CPUs than the workers need (and at least twice
    the cores), so Ray Data's read tasks always find one (whole-CPU workers that take every
    logical CPU of a 2-core machine leave the read tasks none, and training hangs); the workers
    are few and the read tasks short, so the logical oversubscription costs nothing. Worker
    output stays in Ray's session logs: training shows its progress from the run folder.
    """
    workers = max(1, num_workers)
    needed = math.ceil(workers * cpus_per_worker) + 2
    num_cpus = max(2 * (os.cpu_count() or 1), needed)
    num_gpus = None
    if use_gpu and not os.environ.get("RAY_ADDRESS"):
        import torch

        num_gpus = torch.cuda.device_count()
    connect_or_start(num_cpus, num_gpus, log=log, worker_logs=False)


def start_for_sweep(concurrent_trials: int, cpus_per_trial: float, gpus_per_trial: float, *,
                    early_stopping: bool, log: Callable[[str], None] = print) -> None:
    """Connect to ``RAY_ADDRESS`` if set (or keep the Ray this process already has), else start
    a local Ray big enough for ``concurrent_trials`` trials at once plus one CPU for reads.

    With early stopping (ASHA) the dashboard (State API) must be up: otherwise the placement
    groups of stopped trials are never cleaned and later trials wait forever.
    """
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        connect_or_start(1, log=log, worker_logs=False)
        return
    num_cpus = max(os.cpu_count() or 1, math.ceil(max(1, concurrent_trials) * cpus_per_trial) + 1)
    num_gpus = None
    if gpus_per_trial:
        import torch

        num_gpus = torch.cuda.device_count()
    connect_or_start(num_cpus, num_gpus, dashboard=early_stopping, log=log,
                     reason="dashboard on: ASHA needs the State API" if early_stopping else "")
