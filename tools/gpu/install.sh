#!/usr/bin/env bash
# On the lent GPU machine: install what tools/gpu/wheelhouse.sh prepared, one call per step (the
# machine stays warm between calls, and each call carries 64 MiB at most):
#   tools/gpu/install.sh wheels       carry .device/wheels: the mlp wheels, their deps and pytest
#   tools/gpu/install.sh part FILE    carry one .device/ort/*.part-a? : kept in /tmp/mlp-gpu/parts
#   tools/gpu/install.sh ort          join the parts and install onnxruntime-gpu
# Then the checks:  PYTHONPATH=/tmp/mlp-gpu/ort:/tmp/mlp-gpu/site python3 -m pytest -m cuda tests/cuda -s
# (tests/cuda only: the other suites' test dependencies are not on that machine).
set -euo pipefail
WORK=/tmp/mlp-gpu
install() {  # install TARGET WHEEL...: beside the machine's own packages, which stay untouched
    local target=$1; shift
    python3 -m pip install --quiet --no-index --no-deps --no-compile --target "$target" "$@"
}
case "${1:-}" in
wheels) install "$WORK/site" "$(dirname "$0")/../../.device/wheels"/*.whl ;;
part) mkdir -p "$WORK/parts" && cp "$2" "$WORK/parts/" && ls -l "$WORK/parts" ;;
ort)
    first=$(ls "$WORK"/parts/*.part-aa)
    wheel="$WORK/${first##*/}" && wheel="${wheel%.part-aa}"
    cat "$WORK"/parts/*.part-a? >"$wheel"
    install "$WORK/ort" "$wheel"
    ;;
*) echo "usage: tools/gpu/install.sh wheels | part FILE | ort" >&2; exit 2 ;;
esac
