"""Connecting to Ray: the one place that decides between a cluster and a local instance.

Every verb that runs on Ray (``train``, ``tune``, ``ingest --scheduler ray``) goes through
:func:`connect_or_start`: with ``RAY_ADDRESS`` set it joins that cluster (``ray job submit``
sets it for the job's driver); otherwise it starts a local Ray sized by the caller, with the
object store capped, since action-ray streams volumes and never holds a collection in it.
"""

from __future__ import annotations

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
