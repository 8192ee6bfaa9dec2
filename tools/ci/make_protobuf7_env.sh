#!/usr/bin/env bash
# A venv holding only protobuf 7, for mlp-serve's test that its generated protobuf modules
# (protobuf-6 gencode) load and round-trip under the next major runtime as well.
#   packages/serve/tests/test_grpc_protos.py runs .venvs/protobuf7/bin/python in a subprocess.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
ensure_uv
VENV="$ROOT/.venvs/protobuf7"
if [ ! -x "$VENV/bin/python" ]; then
    uv venv "$VENV" --python 3.11
fi
uv pip install --python "$VENV/bin/python" 'protobuf>=7,<8'
"$VENV/bin/python" -c 'import google.protobuf as p; print("protobuf", p.__version__, "in", "'"$VENV"'")'
