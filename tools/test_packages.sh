#!/usr/bin/env bash
# Each package's tests in an environment holding only that package, its declared dependencies
# (and the extras named below) and its own dev group: an undeclared dependency fails here.
# Usage: tools/test_packages.sh [core obs ...]   (default: every package that has tests)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_uv >/dev/null

declare -A EXTRAS=(
    [obs]="--extra mlflow --extra gpu"
)

packages=("$@")
if [ ${#packages[@]} -eq 0 ]; then
    for dir in "$ROOT"/packages/*/; do packages+=("$(basename "$dir")"); done
fi

status=0
for name in "${packages[@]}"; do
    tests="$ROOT/packages/$name/tests"
    if ! compgen -G "$tests/test_*.py" >/dev/null; then
        echo "mlp-$name: no tests yet (its code lands in a later issue)"
        continue
    fi
    step "mlp-$name: isolated environment .venvs/$name"
    # shellcheck disable=SC2086
    (cd "$ROOT" && UV_PROJECT_ENVIRONMENT="$ROOT/.venvs/$name" \
        uv sync --frozen --package "mlp-$name" ${EXTRAS[$name]:-} --quiet)
    step "mlp-$name: tests"
    set +e
    (cd "$ROOT" && "$ROOT/.venvs/$name/bin/python" -m pytest "$tests" -q -p no:cacheprovider)
    rc=$?
    set -e
    if [ $rc -ne 0 ]; then echo "mlp-$name: tests FAILED (pytest exit $rc)"; status=1; fi
done
exit $status
