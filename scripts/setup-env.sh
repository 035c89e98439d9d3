#!/usr/bin/env bash
# Create ./.venv with everything hpacli needs (idempotent). Sourced by .ci/run and
# examples/demo.sh. torch/torchvision come first so that pip does not pick other builds;
# the parquet extra (pyarrow) lets the tests check `hpa predict --export cells.parquet`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${HPA_VENV:-$root/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"
pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
python -c "import torch, torchvision" 2>/dev/null || \
  pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
pip install -q --disable-pip-version-check "$root[test,bench,parquet]"
pip install -q --disable-pip-version-check "$root/plugins/hpa-plugin-example"

