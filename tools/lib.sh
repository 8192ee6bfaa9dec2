# shellcheck shell=bash
# Shared by every script under tools/ (and packages/serve/gen_protos.sh): find or install uv,
# and the workspace's extras.
# Sourced, not run.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export UV_LINK_MODE="${UV_LINK_MODE:-hardlink}"

# Extras of the shared development environment (.venv): everything but the CUDA wheels of
# onnxruntime-gpu[cuda], which only a GPU machine can use.
WORKSPACE_EXTRAS=(--extra mlflow --extra gpu --extra export --extra yolo --extra parquet)

ensure_uv() {
    if ! command -v uv >/dev/null 2>&1; then
        echo "==> installing uv" >&2
        python3 -m pip install --quiet uv || python3 -m pip install --quiet --user uv
        export PATH="$HOME/.local/bin:$PATH"
    fi
    uv --version >&2
}

sync_workspace() {
    echo "==> syncing the workspace environment (.venv)" >&2
    (cd "$ROOT" && uv sync --frozen --all-packages "${WORKSPACE_EXTRAS[@]}")
}

step() { printf '\n==> %s\n' "$*" >&2; }

# ensure_debian_packages PACKAGE[:COMMAND,...]...: apt-get install the Debian packages whose
# commands are missing (a package's command is its own name unless listed after the colon).
# Nothing happens when every command is there already; apt-get update runs once per process.
# As root (CI) directly, otherwise through sudo.
ensure_debian_packages() {
    local spec package commands command missing=()
    for spec in "$@"; do
        package=${spec%%:*}
        commands=${spec#*:}
        for command in ${commands//,/ }; do
            if ! command -v "$command" >/dev/null 2>&1; then
                missing+=("$package")
                break
            fi
        done
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    command -v apt-get >/dev/null 2>&1 || {
        echo "missing ${missing[*]}, and no apt-get here: install them with your package manager" >&2
        return 1
    }
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then sudo=(sudo); fi
    echo "==> installing Debian packages: ${missing[*]}" >&2
    if [ -z "${_MLP_APT_UPDATED:-}" ]; then
        "${sudo[@]}" apt-get update -qq
        _MLP_APT_UPDATED=1
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}"
}
