#!/usr/bin/env bash
# Here, before a GPU machine is lent: the wheels it lacks (it has Python 3.12, torch with CUDA and
# a CPU-only onnxruntime, and no network) and the six mlp wheels of this checkout, in
# .device/wheels; onnxruntime-gpu in 52 MB parts in .device/ort (a call carries 64 MiB at most).
# tools/gpu/install.sh installs them there; see tools/gpu/README.md.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
ensure_uv >/dev/null
ORT_GPU=onnxruntime-gpu==1.31.1
download() {
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 "$@"
}
house="$ROOT/.device/wheels"
rm -rf "$house" && mkdir -p "$house"
download -d "$house" \
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection structlog \
    jsonschema jsonschema-specifications referencing rpds-py fastapi starlette python-multipart \
    uvicorn grpcio==1.81.1 protobuf==6.33.6 grpcio-health-checking==1.81.1 \
    grpcio-reflection==1.81.1 tritonclient==2.73.0 python-rapidjson opentelemetry-api \
    importlib-metadata pytest pluggy iniconfig packaging pygments
(cd "$ROOT" && uv build --all-packages --wheel --out-dir "$house" --quiet)
ort="$ROOT/.device/ort"
if ! compgen -G "$ort/*.whl.part-a?" >/dev/null; then
    rm -rf "$ort" && mkdir -p "$ort"
    download -d "$ort" "$ORT_GPU"
    # The parts keep the wheel's name, which install.sh needs to join and install them.
    (cd "$ort" && wheel=$(ls onnxruntime_gpu-*.whl) && split -b 52000000 "$wheel" "$wheel.part-" \
        && rm "$wheel")
fi
du -sh "$house"; ls "$ort"
