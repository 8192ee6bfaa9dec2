#!/usr/bin/env bash
# Wheels for tools/gpu_check.sh: the GPU machine has Python 3.12 and no network.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_uv >/dev/null
house="$ROOT/.device/wheels"
mkdir -p "$house"
python3 -m pip download --quiet --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d "$house" \
    "pydantic>=2.6" "pyyaml>=6" "numpy>=1.24" "structlog>=24.1" "prometheus-client>=0.20" \
    "psutil>=5.9" "nvidia-ml-py>=12.535"
(cd "$ROOT" && uv build --package mlp-core --package mlp-obs --wheel --out-dir "$house" --quiet)
ls "$house"
