"""Secrets are never written: distinctive credentials go in as storage options and as AWS_*
variables, through ingest, train (store and run directory on the local S3 server), evaluate
and predict, run as a user runs them (the CLI, its own local Ray). Then every file written
(local outputs, every object in the bucket, the Ray session logs) and all of stdout/stderr are
searched for them: zero hits.

URL user info (``s3://user:pass@...``) cannot reach the S3 server (botocore refuses it), so its
masking is tested on the messages and the echoed config (test_redaction.py, test_cli.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ENV_SECRETS = {"AWS_ACCESS_KEY_ID": "ENVKEYID-q7781", "AWS_SECRET_ACCESS_KEY": "ENVSECRET-q7782"}
OPTION_SECRETS = {"key": "OPTKEY-q7784", "secret": "OPTSECRET-q7785"}
SECRETS = [*ENV_SECRETS.values(), *OPTION_SECRETS.values()]


def _hits(root: Path) -> list[str]:
    """Files under ``root`` that contain any secret (binary files included: checkpoints)."""
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                data = path.read_bytes()
            except OSError:
                continue
            found += [f"{path}: {s}" for s in SECRETS if s.encode() in data]
    return found


def test_no_secret_reaches_a_file_a_log_or_the_terminal(s3_server, tmp_path):
    ray_tmp = tempfile.mkdtemp(prefix="ar-sec-", dir="/tmp")  # short: Ray's socket paths have a limit
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "RAY_ADDRESS"}
    env.update(ENV_SECRETS, AWS_ENDPOINT_URL=s3_server.endpoint_url, AWS_DEFAULT_REGION=s3_server.region,
               AWS_EC2_METADATA_DISABLED="true", RAY_TMPDIR=ray_tmp)
    bucket = s3_server.new_bucket("secrets")
    store = f"s3://{bucket}/store.zarr"
    runs = f"s3://{bucket}/runs"
    option_flags = [f for k, v in OPTION_SECRETS.items() for f in ("--storage-option", f"{k}={v}")]
    option_yaml = "data.storage_options={" + ", ".join(f"{k}: {v}" for k, v in OPTION_SECRETS.items()) + "}"
    terminal: list[str] = []

    def cli(*args: str) -> None:
        result = subprocess.run([sys.executable, "-m", "action_ray.cli", *args], capture_output=True, text=True,
                                env=env, cwd=tmp_path, timeout=900)
        terminal.append(result.stdout + result.stderr)
        assert result.returncode == 0, (args[0], result.stderr[-3000:])

    try:
        cli("synth", "cardiac", "--out", str(tmp_path / "phantoms"), "--cases", "6", "--size", "128")
        cli("ingest", str(tmp_path / "phantoms"), store, "--layout", "acdc", "--recipe", "phantom-cardiac",
            "--no-progress", *option_flags)
        cli("train", "--config", "cpu-demo", f"data.store={store}", option_yaml, f"train.storage_path={runs}",
            "train.run_name=secret-run", "method=supervised", "data.labelled_patients=1", "data.slice_size=32",
            "schedule.ft.iterations=4", "train.report_every=2", "train.checkpoint_every=2", "eval.val_every=2")
        cli("evaluate", f"{runs}/secret-run", "--store", store, "--split", "test", "--out",
            str(tmp_path / "evaluation"), "--no-progress", *option_flags)
        scan = next((tmp_path / "phantoms").rglob("*_frame01.nii.gz"))
        cli("predict", f"{runs}/secret-run", str(scan), "--out", str(tmp_path / "predictions"), "--no-progress",
            *option_flags)

        bucket_copy = tmp_path / "bucket"
        client = s3_server.client()
        keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                for o in page.get("Contents", [])]
        assert any(k.endswith("state.pt") for k in keys) and any(k.endswith("metrics.jsonl") for k in keys)
        bucket_copy.mkdir()
        for index, key in enumerate(keys):  # flat names: "runs" and "runs/x" may both be objects
            client.download_file(bucket, key, str(bucket_copy / f"{index:05d}"))
        assert list((tmp_path / "predictions").iterdir()) and (tmp_path / "evaluation").exists()
        assert any(Path(ray_tmp).rglob("*.log")), "the Ray session logs were not where this test looks"
        hits = _hits(tmp_path) + _hits(Path(ray_tmp))
        hits += [f"terminal output of command {i}: {s}" for i, text in enumerate(terminal) for s in SECRETS
                 if s in text]
        assert not hits, hits
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
