#!/usr/bin/env bash
# The main job, end to end, on a fresh machine (installs uv and the environment itself).
# Today: the environment report and a small tracked run through the observability layer.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
ensure_uv
sync_workspace

step "mlp doctor"
.venv/bin/mlp doctor

step "a small tracked run (logs, Prometheus metrics, MLflow)"
.venv/bin/python tools/demo_obs.py "${1:-runs}"
