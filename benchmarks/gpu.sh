#!/usr/bin/env bash
# One GPU's rates for the Kaggle-size job, in under 8 minutes (benchmarks/gpu_bench.py does the work):
#   train-image img/s at 1024² (bf16, and fp16 with gradient scaling; channels_last),
#   pseudolabel cells/s with 4 views, hpa-unet img/s at 2048², predict cells/s, train-cell cells/s,
#   peak GPU memory per stage (nvidia-smi), and the projected one-GPU wall time of the whole job.
#
#   bash benchmarks/gpu.sh                 # on a machine with a GPU
#   bash benchmarks/gpu.sh --cpu-smoke     # toy sizes on the CPU: checks that the script works
#   bash benchmarks/gpu.sh --json out.json # also the numbers as JSON
#
# A GPU machine without hpacli's dependencies installed (no package index reachable from it):
# bring them as wheels. On a machine with pip access, in the repository root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 \
#     iterative-stratification==0.1.9 ImageHash==4.3.2 PyWavelets==1.9.0 faiss-cpu==1.15.1 pycocotools==2.0.11
# (add --platform manylinux_2_N_x86_64 for other N if pip finds no match; --python-version must be the GPU
# machine's Python), copy .whl/ beside this repository there (or carry it with the call), and this script
# installs it into /tmp/site before it starts (already installed packages are left alone).
# Tested here only with --cpu-smoke: no GPU was lent while it was written (see the README).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 HPA_LOAD_PLUGINS=
"$PY" -c "import torch; print('torch', torch.__version__, '| CUDA', torch.cuda.is_available(), '|',
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
exec "$PY" benchmarks/gpu_bench.py "$@"
