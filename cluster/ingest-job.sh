#!/usr/bin/env bash
# Convert a scan collection in object storage into a volume store, on the Ray cluster.
#
#   bash cluster/ingest-job.sh s3://my-bucket/raw/ACDC s3://my-bucket/acdc.zarr acdc
#
# The job's driver lists SRC and plans the split on the head; every case is one Ray task
# (dask-on-Ray, `--scheduler ray`) that reads its NIfTI files and writes its arrays straight
# from the worker node to DST, so the collection never passes through the head. Each task
# takes one CPU: a node holds at most as many cases in memory as it has CPUs. A case is
# complete only when its marker is written last; run the same script again after any failure
# (driver, node, or bad scans) and only the missing cases are read.
#
# Set RAY_ADDRESS to the dashboard (default http://127.0.0.1:8265, e.g. `ray dashboard
# cluster/aws.yaml`). Credentials: an instance role / workload identity on the nodes, or
# `--runtime-env-json` at submit time (cluster/README.md); never in this file.
set -euo pipefail
SRC=${1:?usage: cluster/ingest-job.sh SRC DST [LAYOUT]}
DST=${2:?usage: cluster/ingest-job.sh SRC DST [LAYOUT]}
LAYOUT=${3:-acdc}
ray job submit --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" \
    --runtime-env cluster/runtime_env.yaml -- \
    action-ray ingest "$SRC" "$DST" --layout "$LAYOUT" --scheduler ray --no-progress
