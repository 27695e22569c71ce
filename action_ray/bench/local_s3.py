"""A throw-away S3 server on 127.0.0.1 (moto), so S3 benchmarks need no cloud account.

The server is a child process (``python -m moto.server``) that keeps every object in memory:
its work and memory stay out of the benchmark's own process, as a real S3 would, and leaving
the ``with`` block ends it, whatever happened inside. Child processes reach it through the AWS
variables in :attr:`LocalS3.env` (what a user would export), the benchmark's own process
through :attr:`LocalS3.storage_options`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from action_ray.errors import ConfigError

#: Credentials the local server accepts (moto accepts any); never real ones.
_KEY, _SECRET, _REGION = "bench-key-id", "bench-secret", "us-east-1"
#: Seconds the server may take to accept connections, and attempts on a port taken meanwhile.
STARTUP_TIMEOUT_S, START_ATTEMPTS = 60.0, 3


@dataclass(frozen=True)
class LocalS3:
    """How to reach the running server."""

    endpoint_url: str

    @property
    def storage_options(self) -> dict:
        """fsspec/s3fs options for this process (no region: s3fs would send us-east-1 as a
        bucket's location constraint, which S3 refuses; botocore's default is that region)."""
        return {"endpoint_url": self.endpoint_url, "key": _KEY, "secret": _SECRET}

    @property
    def env(self) -> dict[str, str]:
        """AWS variables for a child process (add them to a copy of ``os.environ``)."""
        return {"AWS_ENDPOINT_URL": self.endpoint_url, "AWS_ACCESS_KEY_ID": _KEY,
                "AWS_SECRET_ACCESS_KEY": _SECRET, "AWS_DEFAULT_REGION": _REGION,
                "AWS_EC2_METADATA_DISABLED": "true"}

    def new_bucket(self, prefix: str) -> str:
        """Create a bucket with a unique name and return the name."""
        from action_ray.urls import filesystem_for

        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        filesystem_for(f"s3://{name}", self.storage_options)[0].mkdir(name)
        return name


def _missing_server_modules() -> list[str]:
    """What ``python -m moto.server`` needs and cannot find (looked up, not imported: it is slow)."""
    from importlib.util import find_spec

    missing = []
    for name in ("moto.server", "flask", "flask_cors"):
        try:
            found = find_spec(name) is not None
        except (ImportError, ValueError):  # the parent package is missing, or the module is blocked
            found = False
        if not found:
            missing.append(name)
    return missing


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _accepts_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _start(port: int, log) -> subprocess.Popen | None:
    """The server on ``port``, once it accepts connections; None if it exited (port taken)."""
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=log, env={**os.environ, "MOTO_PORT": str(port)})
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while server.poll() is None and time.monotonic() < deadline:
        if _accepts_connections(port):
            return server
        time.sleep(0.1)
    if server.poll() is None:
        _stop(server)
        raise RuntimeError(f"the local S3 server did not accept connections within {STARTUP_TIMEOUT_S:.0f} s")
    return None


@contextmanager
def local_s3_server() -> Iterator[LocalS3]:
    """Start moto's S3 server on a free port of 127.0.0.1; stop it on leaving the block."""
    missing = _missing_server_modules()
    if missing:
        raise ConfigError(f"--s3 runs a local S3 server (moto), and {', '.join(missing)} cannot be imported: "
                          "pip install 'moto[server]'")
    with tempfile.TemporaryFile() as log:  # one line per request: kept only to explain a failed start
        for _ in range(START_ATTEMPTS):
            port = _free_port()
            server = _start(port, log)
            if server is not None:
                break
        else:
            log.seek(0)
            raise RuntimeError("the local S3 server would not start:\n" + log.read().decode(errors="replace")[-2000:])
        try:
            yield LocalS3(endpoint_url=f"http://127.0.0.1:{port}")
        finally:
            _stop(server)
