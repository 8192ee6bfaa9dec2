#!/usr/bin/env bash
# Each package's tests in an environment holding only that package, its declared dependencies
# (and the extras named below) and its own dev group: an undeclared dependency fails here.
# Usage: tools/ci/test_packages.sh [core obs ...]   (default: every suite)
# pytest runs from the root, so the root pyproject's [tool.pytest.ini_options] applies.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
ensure_uv >/dev/null

# suite = package : extras : test folder (under packages/<package>/)
SUITES=(
    "core:image:tests"          # the image extra: ImageEvalSpec.apply needs Pillow
    "obs:mlflow gpu:tests"
    "data::tests"
    "models:yolo:tests"         # YOLOModel needs ultralytics (AGPL-3.0, the optional extra)
    "train:yolo:tests"          # detection trains through ultralytics' engine
    "serve:parquet:tests"       # the server alone (no torch); pyarrow for mlp predict --local
    "serve:export yolo:tests_export" # the exporter: mlp-serve[export], detection runs too
)

wanted=("$@")
status=0
for suite in "${SUITES[@]}"; do
    IFS=: read -r name extras folder <<<"$suite"
    if [ ${#wanted[@]} -gt 0 ] && [[ ! " ${wanted[*]} " == *" $name "* ]]; then continue; fi
    tests="$ROOT/packages/$name/$folder"
    if ! compgen -G "$tests/test_*.py" >/dev/null; then
        echo "mlp-$name ($folder): no tests"; status=1; continue
    fi
    venv="$ROOT/.venvs/$name${extras:+-${extras// /-}}"
    flags=()
    for extra in $extras; do flags+=(--extra "$extra"); done
    step "mlp-$name${extras:+[$extras]}: isolated environment ${venv#"$ROOT"/}"
    (cd "$ROOT" && UV_PROJECT_ENVIRONMENT="$venv" \
        uv sync --frozen --package "mlp-$name" "${flags[@]}" --quiet)
    step "mlp-$name${extras:+[$extras]}: $folder"
    set +e
    (cd "$ROOT" && "$venv/bin/python" -m pytest "$tests" -q -p no:cacheprovider)
    rc=$?
    set -e
    if [ $rc -ne 0 ]; then echo "mlp-$name: $folder FAILED (pytest exit $rc)"; status=1; fi
done
exit $status
