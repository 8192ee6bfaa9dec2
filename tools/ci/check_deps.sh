#!/usr/bin/env bash
# Every package imports only what its own pyproject declares (deptry, run per package).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
status=0
for pkg in "$ROOT"/packages/*/; do
    name=$(basename "$pkg")
    if (cd "$pkg" && "$ROOT/.venv/bin/deptry" src); then
        echo "mlp-$name: imports match its declared dependencies"
    else
        echo "mlp-$name: FAILED (see above)"; status=1
    fi
done
exit $status
