#!/usr/bin/env bash
# Every check and every test, on a fresh machine too: installs uv and the environments itself.
#   lint (ruff) -> types (pyright) -> package edges (import-linter) -> declared imports (deptry)
#   -> each package's tests in its own isolated env -> cross-package tests (with the deploy linters
#   and the live deploy tests of tests/deploy/) -> wheel check
# The steps' scripts live in tools/ci/; the GPU machine's tests (pytest -m cuda) in tools/gpu/.
# .github/workflows/ci.yml runs the same steps as separate jobs.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
ensure_uv
sync_workspace
# Prometheus and promtool for tests/deploy/ (alert rules, the live Prometheus and local-stack
# tests); the linters there (shellcheck, yamllint, hadolint, check-jsonschema, ...) come with
# the workspace's dev group.
ensure_debian_packages prometheus:prometheus,promtool

step "ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .

step "types (pyright over every packages/*/src; zero errors)"
.venv/bin/pyright

step "import contracts (import-linter)"
.venv/bin/lint-imports --no-cache

step "declared dependencies (deptry)"
tools/ci/check_deps.sh

step "per-package tests, each in an isolated environment"
tools/ci/make_protobuf7_env.sh  # the gRPC stubs are also tested under protobuf 7
tools/ci/test_packages.sh

step "cross-package tests (tests/, the deploy linters and tests in tests/deploy/ too)"
set +e
.venv/bin/python -m pytest tests -q -p no:cacheprovider
rc=$?
set -e
# pytest exits 5 when it collected nothing; that must not pass silently as success either.
if [ $rc -eq 5 ]; then echo "tests/: no tests collected"; exit 1; fi
[ $rc -eq 0 ] || exit $rc

step "wheel check"
tools/ci/wheel_check.sh

step "all checks passed"
