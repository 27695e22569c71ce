"""How action-ray starts or joins Ray: which environment a local Ray gets, and a cluster does not.

``ray.init`` is replaced by a recorder here: what is tested is the decision made before it (the
real start-up is exercised by every slow test that trains).
"""

from __future__ import annotations

import os

import pytest

from action_ray import ray_session

POLL = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


@pytest.fixture
def recorded_init(monkeypatch):
    import ray

    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(
        {"kwargs": kwargs, "poll": os.environ.get(POLL), "watcher": os.environ.get(WATCHER)}))
    return calls


def test_a_local_ray_polls_train_workers_fast_unless_the_user_chose(recorded_init, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(POLL, raising=False)
    monkeypatch.delenv(WATCHER, raising=False)
    ray_session.connect_or_start(2, log=lambda _: None)
    assert recorded_init[-1]["poll"] == "0.25" and recorded_init[-1]["kwargs"]["num_cpus"] == 2
    assert recorded_init[-1]["watcher"] == "0"  # nothing drains a local machine

    monkeypatch.setenv(POLL, "1.5")
    ray_session.connect_or_start(2, log=lambda _: None)
    assert recorded_init[-1]["poll"] == "1.5"


def test_joining_a_cluster_leaves_its_poll_interval_and_preemption_watcher_alone(recorded_init, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    monkeypatch.delenv(POLL, raising=False)
    monkeypatch.delenv(WATCHER, raising=False)
    lines: list[str] = []
    ray_session.connect_or_start(2, log=lines.append)
    assert recorded_init[-1]["poll"] is None and recorded_init[-1]["watcher"] is None
    assert recorded_init[-1]["kwargs"]["address"] == "127.0.0.1:1"
    assert lines == ["connecting to the Ray cluster at 127.0.0.1:1"]
