#!/usr/bin/env bash
# The main job: set up .venv (first time only), then run the whole pipeline on a generated
# dataset. Artifacts (store, runs, submission, overlays, gallery) stay in ./hpa-demo.
# Pass --quick for the 3-minute version; any other `hpa demo` option works too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh 2> >(grep -v "^WARNING: Location" >&2)
export OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1
exec .venv/bin/hpa demo --out hpa-demo "$@"
