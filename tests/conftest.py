"""Shared test fixtures: an S3 server on 127.0.0.1 (moto) and Ray settings for a small machine.

All test traffic stays on 127.0.0.1. The S3 server is started once per session and stopped at
the end; tests create their own buckets with unique names.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field

import pytest

# Ray settings that must be in the environment before any ray.init() (see docs/ray-notes.md):
# report() otherwise blocks ~2 s per call, and prints would show twice per worker.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Never talk to a real cloud from tests.
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int, avoid: set[int] | frozenset[int] = frozenset()) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1, none in ``avoid``: every socket stays bound
    until all are chosen, so the kernel cannot hand the same port out twice (two Ray agents on
    one port never start)."""
    sockets: list[socket.socket] = []
    chosen: list[int] = []
    try:
        while len(chosen) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            if port not in avoid:
                chosen.append(port)
        return chosen
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class S3Server:
    """A running moto S3 server and the options to reach it."""

    endpoint_url: str
    access_key: str = "testing-key-id"
    secret_key: str = "testing-secret-value"
    region: str = "us-east-1"
    buckets: list[str] = field(default_factory=list)

    @property
    def storage_options(self) -> dict:
        """fsspec/s3fs options (what ``--storage-option`` pairs would build)."""
        return {
            "endpoint_url": self.endpoint_url,
            "key": self.access_key,
            "secret": self.secret_key,
            "client_kwargs": {"region_name": self.region},
        }

    @property
    def env(self) -> dict[str, str]:
        """The AWS environment variables a user would export instead."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )

    def new_bucket(self, prefix: str = "test") -> str:
        """Create a bucket with a unique name and return it."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)
        self.buckets.append(name)
        return name


@pytest.fixture(scope="session")
def s3_server():
    """Start moto's S3 server on 127.0.0.1 for the whole session; stop it at the end."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Server(endpoint_url=f"http://127.0.0.1:{port}")
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Export the AWS variables for the S3 server (as a user would) for one test."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a test module (``pytestmark = usefixtures(...)``).

    The method's tests use tiny tensors and convolutions: a second thread gains nothing and, on
    a 2-core CI runner shared with other test processes, only spins. The previous thread count
    is restored after the module.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
