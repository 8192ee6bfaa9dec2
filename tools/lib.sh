# Shared by every script under tools/ (and packages/serve/gen_protos.sh): find or install uv,
# and the workspace's extras.
# Sourced, not run.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export UV_LINK_MODE="${UV_LINK_MODE:-hardlink}"

# Extras of the shared development environment (.venv): everything but the CUDA wheels of
# onnxruntime-gpu[cuda], which only a GPU machine can use.
WORKSPACE_EXTRAS=(--extra mlflow --extra gpu --extra export)

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
