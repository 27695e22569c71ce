#!/usr/bin/env bash
# One-step set-up on a fresh machine: a virtual environment in .venv with action-ray and its
# test dependencies. Idempotent: re-running only installs what is missing.
#
# torch is installed first, pinned to the CPU build that this project's machines carry, so that
# the package's own range ("torch>=2.4") is already satisfied and pip never fetches a CUDA wheel.
# On a GPU machine set ACTION_RAY_TORCH to the torch requirement you want (e.g. "torch==2.13.0"
# from the CUDA index).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# Not --no-compile: with PYTHONDONTWRITEBYTECODE set (as on this project's machines) nothing would
# ever be compiled, and every process, each Ray worker included, would compile torch and Ray
# from source on every import (a full test run took over 30 minutes instead of 20).
.venv/bin/python -m pip install -q "${ACTION_RAY_TORCH:-torch==2.13.0}"
# Every other dependency at the exact version the demo's numbers were measured with
# (scripts/constraints.txt says why); pyproject.toml keeps the ranges the code supports.
.venv/bin/python -m pip install -q -c scripts/constraints.txt -e ".[test]"
