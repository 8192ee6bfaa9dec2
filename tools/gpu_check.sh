#!/usr/bin/env bash
# GPU checks, run on a lent GPU machine (which has Python, torch with CUDA and no network).
# Build the wheelhouse here first:  tools/gpu_wheelhouse.sh  (writes .device/wheels, git-ignored)
# then run this there with .device carried. Writes its findings under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
site=/tmp/mlp-site
need=(pydantic pydantic-core annotated-types typing-extensions typing-inspection pyyaml
      structlog prometheus-client psutil nvidia-ml-py mlp-core mlp-obs)
python3 -c "import numpy" 2>/dev/null || need+=(numpy)
python3 -m pip install --quiet --no-index --no-deps --find-links .device/wheels \
    --target "$site" "${need[@]}" 2>&1 | tail -3
export PYTHONPATH="$site"
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} > "$OUT/env.txt" 2>&1
python3 -m mlp_core.cli doctor > "$OUT/doctor.txt" 2>&1; echo "doctor exit $?" >> "$OUT/doctor.txt"
python3 -m mlp_core.cli doctor --json > "$OUT/doctor.json" 2> "$OUT/doctor.err"
python3 tools/gpu_check_obs.py > "$OUT/obs.txt" 2>&1; echo "obs exit $?" >> "$OUT/obs.txt"
cat "$OUT"/env.txt "$OUT"/doctor.txt "$OUT"/obs.txt
