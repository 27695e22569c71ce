"""Ingest s3:// -> s3:// through the CLI against a local S3 server; credentials never printed."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from action_ray.ingest.runner import IngestOptions, run_ingest
from action_ray.store import open_store
from niftis import expected_arrays, write_acdc

pytestmark = pytest.mark.slow


def upload_tree(client, bucket: str, local_root, prefix: str) -> None:
    for path in sorted(local_root.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local_root).as_posix()}")


def clean_env() -> dict[str, str]:
    """This process's environment without any AWS variable (a user with no credentials set)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return env


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "action_ray.cli", "ingest", *args, "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=120)


def assert_no_secrets(result: subprocess.CompletedProcess, server) -> None:
    output = result.stdout + result.stderr
    assert server.secret_key not in output and server.access_key not in output


def assert_store_matches(url: str, server, written) -> None:
    store = open_store(url, storage_options=server.storage_options)
    assert sorted(i.case_id for i in store.list_cases()) == sorted(w.case_id for w in written)
    for w in written:
        image, label = store.read_volume(w.case_id)
        np.testing.assert_array_equal(image, expected_arrays(w.image))
        np.testing.assert_array_equal(label, expected_arrays(w.label))
    assert store.case(written[0].case_id).source["image"].startswith("s3://")


@pytest.fixture(scope="module")
def acdc_on_s3(s3_server, tmp_path_factory):
    local = tmp_path_factory.mktemp("acdc")
    written = write_acdc(local, 2)
    bucket = s3_server.new_bucket("ingest")
    upload_tree(s3_server.client(), bucket, local, "raw/ACDC")
    return bucket, written


def test_s3_to_s3_with_aws_env_vars(s3_server, acdc_on_s3):
    bucket, written = acdc_on_s3
    env = {**clean_env(), **s3_server.env}
    result = run_cli([f"s3://{bucket}/raw/ACDC", f"s3://{bucket}/stores/env.zarr", "--layout", "acdc",
                      "--workers", "2"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 written" in result.stdout
    assert_no_secrets(result, s3_server)
    assert_store_matches(f"s3://{bucket}/stores/env.zarr", s3_server, written)
    # resuming over S3 (in-process, to save a process start): nothing re-read or rewritten
    report = run_ingest(IngestOptions(src=f"s3://{bucket}/raw/ACDC", dst=f"s3://{bucket}/stores/env.zarr",
                                      layout="acdc", storage_options=s3_server.storage_options, progress=False),
                        say=lambda line: None)
    assert report.count("complete") == 4 and report.bytes_read == 0


def test_s3_to_s3_with_storage_options(s3_server, acdc_on_s3):
    bucket, written = acdc_on_s3
    options = [f"--storage-option=endpoint_url={s3_server.endpoint_url}", f"--storage-option=key={s3_server.access_key}",
               f"--storage-option=secret={s3_server.secret_key}",
               f"--storage-option=client_kwargs.region_name={s3_server.region}"]
    result = run_cli([f"s3://{bucket}/raw/ACDC", f"s3://{bucket}/stores/opt.zarr", "--layout", "acdc", *options],
                     clean_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert_no_secrets(result, s3_server)
    assert_store_matches(f"s3://{bucket}/stores/opt.zarr", s3_server, written)

    # an error (the destination bucket does not exist) is one line, without the credentials
    failed = run_cli([f"s3://{bucket}/raw/ACDC", "s3://no-such-bucket-x2/x.zarr", "--layout", "acdc", *options],
                     clean_env())
    assert failed.returncode == 2, failed.stdout + failed.stderr
    assert "no-such-bucket-x2" in failed.stderr and "Traceback" not in failed.stderr
    assert_no_secrets(failed, s3_server)


def test_s3_to_s3_on_ray_with_storage_options(s3_server, acdc_on_s3):
    """The Ray scheduler's tasks get the storage options with the task (no AWS_* in their
    environment) and write the same store; nothing secret reaches the output."""
    bucket, written = acdc_on_s3
    options = [f"--storage-option=endpoint_url={s3_server.endpoint_url}", f"--storage-option=key={s3_server.access_key}",
               f"--storage-option=secret={s3_server.secret_key}",
               f"--storage-option=client_kwargs.region_name={s3_server.region}"]
    env = {k: v for k, v in clean_env().items() if k != "RAY_ADDRESS"}
    result = run_cli([f"s3://{bucket}/raw/ACDC", f"s3://{bucket}/stores/ray.zarr", "--layout", "acdc",
                      "--scheduler", "ray", "--workers", "2", *options], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 written" in result.stdout and "starting a local Ray" in result.stdout
    assert_no_secrets(result, s3_server)
    assert_store_matches(f"s3://{bucket}/stores/ray.zarr", s3_server, written)
