"""A Ray cluster of several nodes on 127.0.0.1, started with ``ray start`` and stopped by PID.

Each node gets its own ports (so it never meets another Ray on the machine), its own custom
resource (``node_<name>: 1``) so a test can pin work to it, and the head's temp dir. Token
authentication is disabled for these processes only (``RAY_AUTH_MODE=disabled`` in their
environment). ``ray stop`` is never used: it would end every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

import psutil

from tests.conftest import free_ports

BIN = os.path.dirname(sys.executable)

#: The GCS declares a silent node dead after 3 missed 1-s health checks (default: 5 × 3 s after
#: a 5-s delay), so a test that kills a node waits seconds, not half a minute.
FAST_FAILURE_DETECTION = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
                          "RAY_health_check_failure_threshold": "3"}


@dataclass
class RayNode:
    name: str
    node_manager_port: int
    raylet: psutil.Process | None = None


@dataclass
class LocalRayCluster:
    """Head first (``start``), then ``add_node`` per worker node; ``stop`` ends them all."""

    temp_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="ar-mn-", dir="/tmp"))
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. AWS_* as an instance role would give
    gcs_port: int = 0
    dashboard_port: int = 0
    nodes: dict[str, RayNode] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, **self.extra_env, **FAST_FAILURE_DETECTION, "RAY_AUTH_MODE": "disabled",
                "RAY_ADDRESS": self.address}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def _start(self, name: str, extra: list[str], num_cpus: int, resources: dict[str, float] | None = None,
               node_env: dict[str, str] | None = None) -> None:
        """``ray start`` for one node; retried with fresh ports (up to 3 times) because a port
        found free can be taken by any other process before Ray binds it. ``node_env`` is
        exported to this node only (its raylet, so every worker it starts inherits it)."""
        log_path = os.path.join(self.temp_dir, f"ray-start-{name}.log")
        for _ in range(3):
            node_manager, object_manager, agent_http, agent_grpc, metrics, runtime_env, client = free_ports(7)
            flags = list(extra)
            if name == "head":  # the GCS and dashboard ports, drawn with the others so none repeats
                self.gcs_port, self.dashboard_port = free_ports(2, avoid={node_manager, object_manager, agent_http,
                                                                         agent_grpc, metrics, runtime_env, client})
                flags += [f"--port={self.gcs_port}", f"--dashboard-port={self.dashboard_port}",
                          f"--ray-client-server-port={client}"]
            args = [f"{BIN}/ray", "start", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
                    f"--resources={json.dumps({f'node_{name}': 1, **(resources or {})})}",
                    f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
                    f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
                    f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
                    "--disable-usage-stats", *flags]
            env = {**{k: v for k, v in self.env.items() if k != "RAY_ADDRESS"}, **(node_env or {})}
            with open(log_path, "a") as log:
                # to a file, not a pipe: the daemons inherit the handles and a pipe never reaches EOF
                done = subprocess.run(args, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=180)
            if done.returncode == 0:
                self.nodes[name] = RayNode(name, node_manager, self._raylet(node_manager))
                return
        with open(log_path) as log:
            raise RuntimeError(f"ray start of node {name} failed 3 times:\n{log.read()[-3000:]}")

    def start(self, num_cpus: int = 0) -> "LocalRayCluster":
        self._start("head", ["--head", f"--temp-dir={self.temp_dir}", "--dashboard-host=127.0.0.1",
                             "--include-dashboard=true"], num_cpus)
        return self

    def add_node(self, name: str, num_cpus: int = 1, resources: dict[str, float] | None = None,
                 node_env: dict[str, str] | None = None) -> RayNode:
        self._start(name, [f"--address={self.address}"], num_cpus, resources, node_env)
        return self.nodes[name]

    def _raylet(self, node_manager_port: int) -> psutil.Process | None:
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if "raylet" in cmdline and f"--node_manager_port={node_manager_port}" in cmdline:
                return proc
        return None

    def node_ids(self) -> dict[str, str]:
        """Ray node id of every live node, by our node name (from its custom resource)."""
        import ray

        ids = {}
        for node in ray.nodes():
            if node.get("Alive"):
                for key in node.get("Resources", {}):
                    if key.startswith("node_") and key[5:] in self.nodes:
                        ids[key[5:]] = node["NodeID"]
        return ids

    def kill_node(self, name: str) -> None:
        """SIGKILL a worker node's raylet and everything under it, as a lost machine would."""
        raylet = self.nodes[name].raylet
        assert raylet is not None, f"no raylet found for node {name}"
        family = [raylet, *raylet.children(recursive=True)]
        for proc in family:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(family, timeout=10)

    def processes(self) -> list[psutil.Process]:
        """Every process of this cluster: its cmdline names our temp dir or GCS port, and children."""
        roots = []
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if self.temp_dir in cmdline or (self.gcs_port and re.search(rf":{self.gcs_port}(?!\d)", cmdline)):
                roots.append(proc)
        found = {p.pid: p for p in roots}
        for proc in roots:
            try:
                found.update({c.pid: c for c in proc.children(recursive=True)})
            except psutil.NoSuchProcess:
                pass
        found.pop(os.getpid(), None)
        return list(found.values())

    def stop(self) -> None:
        """SIGTERM every process of the cluster, SIGKILL what is left after 5 s."""
        procs = self.processes()
        for proc in procs:
            try:
                proc.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=5)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
