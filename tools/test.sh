#!/usr/bin/env bash
# Every check and every test, on a fresh machine too: installs uv and the environments itself.
#   lint (ruff) -> package edges (import-linter) -> declared imports (deptry)
#   -> each package's tests in its own isolated env -> cross-package tests -> wheel check
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
ensure_uv
sync_workspace

step "ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .

step "import contracts (import-linter)"
.venv/bin/lint-imports --no-cache

step "declared dependencies (deptry)"
tools/check_deps.sh

step "per-package tests, each in an isolated environment"
tools/make_protobuf7_env.sh  # the gRPC stubs are also tested under protobuf 7
tools/test_packages.sh

step "cross-package tests (tests/) in the workspace environment"
set +e
.venv/bin/python -m pytest tests -q -p no:cacheprovider
rc=$?
set -e
# pytest exits 5 when it collected nothing; that must not pass silently as success either.
if [ $rc -eq 5 ]; then echo "tests/: no tests collected"; exit 1; fi
[ $rc -eq 0 ] || exit $rc

step "wheel check"
tools/wheel_check.sh

step "all checks passed"
