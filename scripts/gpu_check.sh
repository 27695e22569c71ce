#!/usr/bin/env bash
# The one prepared script for a lent GPU machine (device tool): correctness against the CPU,
# then the step benchmark at the published batch sizes. Uses the machine's own PyTorch
# (no registries there) and imports action-ray from the working tree.
#   device run:  bash scripts/gpu_check.sh        (timeout_s ~ 500)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, pydantic, yaml; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
$PY scripts/gpu_check.py; rc=$?
bench() { $PY -m action_ray.cli bench step --device cuda --preset paper --size 256 --steps 20 --warmup 5 "$@"; }
echo "== P2, 3+3 slices (published: 0.062 s on an H200) =="; bench --batch 6 --stages p2
echo "== FT, 4+4 slices (published: 0.44 s on an H200) ==";  bench --batch 4 --stages ft,supervised,mean_teacher
echo "== the same with bf16 autocast + channels_last ==";   bench --batch 6 --stages p2 --amp --channels-last
bench --batch 4 --stages ft --amp --channels-last
exit $rc
