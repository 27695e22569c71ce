"""S3 that throttles and fails: a proxy on 127.0.0.1 in front of the moto server answers some
requests with 503 SlowDown or 500 InternalError instead of forwarding them. Store writes, reads
and listings still succeed (retried with backoff by the S3 client), the data is bit-exact, and a
bucket that always fails gives a one-line error that names the URL and no credential."""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import urlsplit

import numpy as np
import pytest

from action_ray.errors import StoreError
from action_ray.store import CaseMeta, create_store, open_store

FAULTS = (
    (503, b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"),
    (500, b"<Error><Code>InternalError</Code><Message>We encountered an internal error.</Message></Error>"),
)


class FaultyProxy:
    """Forwards to ``upstream``; every ``every``-th request (or all, with ``every=1``) gets a fault.

    With ``only``, just the requests whose (method, path) it accepts are counted and faulted
    (``faulted`` keeps their paths); the others always pass. With ``retry_passes``, a request
    repeated after its fault (same method, path and query: the client's retry) is forwarded,
    so each fault is a transient one that one retry overcomes.
    """

    def __init__(self, upstream: str, every: int,
                 only: Callable[[str, str], bool] | None = None, retry_passes: bool = False) -> None:
        self.upstream = urlsplit(upstream)
        self.every = every
        self.only = only
        self.retry_passes = retry_passes
        self.requests = 0
        self.faults = 0
        self.faulted: list[str] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep the test output clean
                pass

            def _read_body(self) -> bytes:
                """The request body; a chunked one (as the AWS C++ SDK under pyarrow sends
                multipart parts) is de-chunked, to be forwarded with a Content-Length."""
                if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
                    length = int(self.headers.get("Content-Length") or 0)
                    return self.rfile.read(length) if length else b""
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()  # the CRLF after each chunk

            def _handle(self) -> None:
                body = self._read_body()
                counted = proxy.only is None or proxy.only(self.command, self.path)
                if proxy.retry_passes and f"{self.command} {self.path}" in proxy.faulted:
                    counted = False
                with proxy.lock:
                    proxy.requests += counted
                    fault = (FAULTS[proxy.faults % len(FAULTS)]
                             if counted and proxy.requests % proxy.every == 0 else None)
                    if fault:
                        proxy.faults += 1
                        proxy.faulted.append(f"{self.command} {self.path}")
                if fault:
                    status, payload = fault
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                connection = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("connection", "transfer-encoding", "content-length")}
                headers["Content-Length"] = str(len(body))
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                # a HEAD answer has no body but the object's length (clients read sizes from it)
                length = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                connection.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy_factory(s3_server):
    proxies = []

    def make(every: int) -> FaultyProxy:
        proxies.append(FaultyProxy(s3_server.endpoint_url, every))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.close()


def _options(s3_server, endpoint: str) -> dict:
    return {**s3_server.storage_options, "endpoint_url": endpoint}


@pytest.mark.slow  # each injected fault costs a client back-off (about a minute in all)
def test_throttling_and_5xx_are_retried_and_the_data_is_exact(s3_server, proxy_factory):
    proxy = proxy_factory(every=5)
    bucket = s3_server.new_bucket("faults")
    url = f"s3://{bucket}/store.zarr"
    options = _options(s3_server, proxy.endpoint_url)
    store = create_store(url, name="faulty", modality="MR", layout="folder",
                         classes={0: "background", 1: "a"}, storage_options=options)
    rng = np.random.default_rng(0)
    written = {}
    for i in range(2):
        image = rng.normal(100, 10, (3, 16, 16)).astype(np.float32)
        label = (image > 100).astype(np.uint8)
        store.write_case(CaseMeta(f"c{i}", f"p{i}", "train", (5.0, 1.0, 1.0), np.eye(4).tolist(), {"image": "x"}),
                         image, label)
        written[f"c{i}"] = (image, label)
    store.finalize()
    reopened = open_store(url, storage_options=options)
    assert sorted(c.case_id for c in reopened.list_cases()) == sorted(written)
    for case_id, (image, label) in written.items():
        got_image, got_label = reopened.read_volume(case_id)
        np.testing.assert_array_equal(got_image, image)
        np.testing.assert_array_equal(got_label, label)
        reopened.verify_case(case_id)
    assert proxy.faults >= 6, f"only {proxy.faults} faults injected in {proxy.requests} requests"


def test_a_bucket_that_always_fails_is_a_one_line_error_without_credentials(s3_server, proxy_factory):
    proxy = proxy_factory(every=1)
    bucket = s3_server.new_bucket("down")
    with pytest.raises(StoreError) as info:
        open_store(f"s3://{bucket}/store.zarr", storage_options=_options(s3_server, proxy.endpoint_url))
    message = str(info.value)
    assert f"s3://{bucket}/store.zarr" in message and "\n" not in message
    assert s3_server.secret_key not in message and s3_server.access_key not in message
