#!/usr/bin/env bash
# GPU checks on a lent GPU machine (Python 3.12 with torch + CUDA, no network). Prepare here:
#   tools/gpu_wheelhouse.sh        wheels the machine lacks, and ours, into .device/wheels
#   .device/ort/part-a?            onnxruntime-gpu 1.31.1 (cp312) split into 52 MB parts
# then, on the machine, in back-to-back calls (it stays warm 30 s between them):
#   tools/gpu_check.sh train       install the wheels; doctor; CUDA training (32/bf16/fp16),
#                                  DDP over nccl, exports of the runs          (.device/wheels)
#   tools/gpu_check.sh part FILE   keep one onnxruntime-gpu part in /tmp     (.device/ort/part-a?)
#   tools/gpu_check.sh serve       join the parts, serve the exports on the CUDA provider, compare
#                                  with the CPU provider, latency against in-process onnxruntime
# Findings go to $OUT (default /tmp/gpu-check).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
WORK=/tmp/mlp-gpu
SITE=$WORK/site
mkdir -p "$OUT" "$WORK"
export PYTHONPATH=$SITE PYTHONUNBUFFERED=1 YOLO_OFFLINE=true
mlp() { python3 -m mlp_core.cli "$@"; }

case "${1:-}" in
train)
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .device/wheels/*.whl
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/env.txt"
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/env.txt"
    mlp doctor --json > "$OUT/doctor.json"; mlp doctor | tee "$OUT/doctor.txt"
    common=(--set training.device=cuda --set training.tracking.backend=local
            --set training.progress=none --run-dir "$WORK/runs")
    for precision in 32 bf16 fp16; do
        start=$(date +%s.%N)
        run=$(mlp train examples/penguins "${common[@]}" --set training.precision=$precision | tail -n 1)
        echo "penguins precision=$precision $(python3 -c "import json,sys; m=json.load(open('$run/metrics.json')); print('test.accuracy', round(m['test.accuracy'],4))") wall $(python3 -c "print(round($(date +%s.%N)-$start,1))")s" | tee -a "$OUT/train.txt"
        echo "$run" > "$WORK/penguins_$precision.run"
    done
    start=$(date +%s.%N)
    run=$(mlp train examples/digits "${common[@]}" --set training.precision=bf16 | tail -n 1)
    echo "digits resnet18 bf16 $(python3 -c "import json; m=json.load(open('$run/metrics.json')); print('test.accuracy', round(m['test.accuracy'],4))") wall $(python3 -c "print(round($(date +%s.%N)-$start,1))")s" | tee -a "$OUT/train.txt"
    echo "$run" > "$WORK/digits.run"
    # DDP over nccl on this machine's one GPU: the multi-GPU code path, one rank.
    torchrun --standalone --nproc-per-node=1 -m mlp_core.cli train examples/penguins \
        "${common[@]}" --set training.epochs=3 2>&1 | tail -n 2 | tee -a "$OUT/train.txt"
    mlp export "$(cat "$WORK/penguins_32.run")" --repo "$WORK/repo" --name penguins --no-mlflow | tail -n 1
    mlp export "$(cat "$WORK/digits.run")" --repo "$WORK/repo" --name digits --no-mlflow | tail -n 1
    mlp export "$(cat "$WORK/digits.run")" --repo "$WORK/repo" --name digits_fp16 --fp16 --no-mlflow | tail -n 1
    ls -R "$WORK/repo" | head -20
    ;;
part)
    cp "$2" /tmp/ && ls -la /tmp/part-a?
    ;;
serve)
    cp "${2:-/dev/null}" /tmp/ 2>/dev/null
    cat /tmp/part-a? > "$WORK/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl"
    sha256sum "$WORK"/onnxruntime_gpu-*.whl | cut -c1-16
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$WORK/ort" \
        "$WORK"/onnxruntime_gpu-*.whl
    export PYTHONPATH=$WORK/ort:$SITE
    python3 tools/gpu_check_serve.py "$WORK/repo" 2>&1 | tee "$OUT/serve.txt"
    ;;
*)
    echo "usage: tools/gpu_check.sh train | part FILE | serve [LAST_PART]"; exit 2 ;;
esac
