#!/usr/bin/env bash
# Wheels for tools/gpu_check.sh: what the GPU machine (Python 3.12, torch, no network) lacks,
# and the six mlp wheels built from this checkout. Also splits onnxruntime-gpu into parts.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_uv >/dev/null
house="$ROOT/.device/wheels"
rm -rf "$house" && mkdir -p "$house"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$house" \
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection structlog \
    jsonschema jsonschema-specifications referencing rpds-py fastapi starlette python-multipart \
    uvicorn grpcio==1.81.1 protobuf==6.33.6 grpcio-health-checking==1.81.1 \
    grpcio-reflection==1.81.1 tritonclient==2.73.0 python-rapidjson opentelemetry-api importlib-metadata
(cd "$ROOT" && uv build --all-packages --wheel --out-dir "$house" --quiet)
ort="$ROOT/.device/ort"
if [ ! -f "$ort/part-aa" ]; then
    mkdir -p "$ort"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 -d "$ort" onnxruntime-gpu==1.31.1
    (cd "$ort" && split -b 52000000 onnxruntime_gpu-*.whl part-)
fi
ls "$house" "$ort"
