#!/usr/bin/env bash
# The local stack without Docker: mlp serve, Prometheus and an MLflow server on loopback, run by
# honcho from deploy/local/Procfile (compose.yaml is the same stack in containers).
#   tools/stack.sh start    # returns once all three answer, and prints their URLs
#   tools/stack.sh status   # each service up or down; exit 0 only when all are up
#   tools/stack.sh stop     # SIGTERM, then waits until every process of the stack is gone
# An empty model repository gets a tiny penguins model first, trained into the stack's MLflow.
# Settings (environment; `start` records them in <dir>/stack.env for status and stop):
#   MLP_STACK_DIR (runs/stack)          its folder: models, MLflow store, Prometheus data, log
#   MLP_STACK_MODELS (<dir>/models)     the model repository mlp serve serves
#   MLP_STACK_HTTP_PORT (8000)  MLP_STACK_GRPC_PORT (8001)  MLP_STACK_PROMETHEUS_PORT (9090)
#   MLP_STACK_MLFLOW_PORT (5000)  MLP_STACK_TRAIN_METRICS_PORT (9400, scraped when mlp train runs)
#   MLP_STACK_TIMEOUT (300)             seconds `start` waits for the three to answer
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

usage() { echo "usage: tools/stack.sh start|stop|status" >&2; exit 2; }

# The stack's folder is absolute: the Procfile builds sqlite:/// URIs and flags from it.
STACK_DIR=$(mkdir -p "${MLP_STACK_DIR:-$ROOT/runs/stack}" && cd "${MLP_STACK_DIR:-$ROOT/runs/stack}" && pwd)
ENV_FILE="$STACK_DIR/stack.env"
PID_FILE="$STACK_DIR/honcho.pid"
LOG_FILE="$STACK_DIR/stack.log"

load_settings() {
    # A running stack's settings win over the caller's environment: status and stop must talk
    # to the ports it was started with.
    if [ -f "$ENV_FILE" ] && [ "${1:-}" != fresh ]; then
        # shellcheck source=/dev/null
        source "$ENV_FILE"
    fi
    MLP_STACK_MODELS=${MLP_STACK_MODELS:-$STACK_DIR/models}
    MLP_STACK_HTTP_PORT=${MLP_STACK_HTTP_PORT:-8000}
    MLP_STACK_GRPC_PORT=${MLP_STACK_GRPC_PORT:-8001}
    MLP_STACK_PROMETHEUS_PORT=${MLP_STACK_PROMETHEUS_PORT:-9090}
    MLP_STACK_MLFLOW_PORT=${MLP_STACK_MLFLOW_PORT:-5000}
    MLP_STACK_TRAIN_METRICS_PORT=${MLP_STACK_TRAIN_METRICS_PORT:-9400}
    MLP_STACK_TIMEOUT=${MLP_STACK_TIMEOUT:-300}
}

alive() {  # alive PID: running, and not a zombie waiting for its parent
    local state
    state=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $state != Z* ]]
}

descendants() {  # every process below PID (honcho starts each service in its own session)
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "$child"
        descendants "$child"
    done
}

honcho_pid() {  # the pid of a running stack's honcho, or nothing
    local pid
    [ -f "$PID_FILE" ] || return 0
    pid=$(<"$PID_FILE")
    if alive "$pid"; then echo "$pid"; fi
}

http_ok() {  # http_ok URL: answers 2xx within 2 s
    python3 - "$1" 2>/dev/null <<'PY'
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=2)
PY
}

# name|readiness URL|what a person opens
services() {
    cat <<EOF
api|http://127.0.0.1:$MLP_STACK_HTTP_PORT/v2/health/ready|REST http://127.0.0.1:$MLP_STACK_HTTP_PORT (gRPC 127.0.0.1:$MLP_STACK_GRPC_PORT)
prometheus|http://127.0.0.1:$MLP_STACK_PROMETHEUS_PORT/-/ready|http://127.0.0.1:$MLP_STACK_PROMETHEUS_PORT
mlflow|http://127.0.0.1:$MLP_STACK_MLFLOW_PORT/health|http://127.0.0.1:$MLP_STACK_MLFLOW_PORT
EOF
}

all_up() {
    local name url _
    while IFS='|' read -r name url _; do
        http_ok "$url" || return 1
    done < <(services)
}

write_prometheus_config() {
    local dir="$STACK_DIR/prometheus"
    mkdir -p "$dir/targets" "$dir/data"
    cp deploy/local/prometheus.yml "$dir/prometheus.yml"
    ln -sfn "$ROOT/deploy/prometheus/rules" "$dir/rules"
    local job port
    for job in mlp-serve:"$MLP_STACK_HTTP_PORT" mlp-train:"$MLP_STACK_TRAIN_METRICS_PORT" \
        prometheus:"$MLP_STACK_PROMETHEUS_PORT"; do
        port=${job#*:}
        printf '[{"targets": ["127.0.0.1:%s"], "labels": {"stack": "local"}}]\n' "$port" \
            >"$dir/targets/${job%%:*}.json"
    done
}

check_tools() {
    if [ ! -x .venv/bin/mlflow ] || [ ! -x .venv/bin/honcho ] || [ ! -x .venv/bin/mlp ]; then
        ensure_uv
        sync_workspace
    fi
    command -v prometheus >/dev/null || {
        echo "prometheus is not installed: apt-get install prometheus (Debian, Ubuntu)," \
            "or put a prometheus binary on PATH" >&2
        exit 1
    }
}

start() {
    local pid
    pid=$(honcho_pid)
    [ -z "$pid" ] || { echo "the stack in $STACK_DIR already runs (honcho pid $pid)" >&2; exit 1; }
    load_settings fresh
    check_tools
    mkdir -p "$MLP_STACK_MODELS" "$STACK_DIR/mlflow/artifacts" "$STACK_DIR/runs"
    MLP_STACK_MODELS=$(cd "$MLP_STACK_MODELS" && pwd)
    cat >"$ENV_FILE" <<EOF
MLP_STACK_DIR=$STACK_DIR
MLP_STACK_MODELS=$MLP_STACK_MODELS
MLP_STACK_HTTP_PORT=$MLP_STACK_HTTP_PORT
MLP_STACK_GRPC_PORT=$MLP_STACK_GRPC_PORT
MLP_STACK_PROMETHEUS_PORT=$MLP_STACK_PROMETHEUS_PORT
MLP_STACK_MLFLOW_PORT=$MLP_STACK_MLFLOW_PORT
MLP_STACK_TRAIN_METRICS_PORT=$MLP_STACK_TRAIN_METRICS_PORT
MLP_STACK_TIMEOUT=$MLP_STACK_TIMEOUT
EOF
    write_prometheus_config

    # setsid: the stack outlives this shell and its terminal; honcho reads stack.env itself.
    PATH="$ROOT/.venv/bin:$PATH" setsid .venv/bin/honcho start --no-colour \
        -f deploy/local/Procfile -d "$ROOT" -e "$ENV_FILE" >"$LOG_FILE" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$PID_FILE"
    echo "starting the local stack (honcho pid $pid; log $LOG_FILE)"

    local deadline=$((SECONDS + MLP_STACK_TIMEOUT))
    until all_up; do
        if ! alive "$pid"; then
            tail -n 40 "$LOG_FILE" >&2
            echo "the local stack stopped while starting (log: $LOG_FILE)" >&2
            rm -f "$PID_FILE"
            exit 1
        fi
        if [ $SECONDS -ge $deadline ]; then
            tail -n 40 "$LOG_FILE" >&2
            echo "the local stack did not answer within ${MLP_STACK_TIMEOUT}s: stopping it" >&2
            stop >&2 || true
            exit 1
        fi
        sleep 1
    done
    local name _ open
    while IFS='|' read -r name _ open; do
        printf '  %-10s %s\n' "$name" "$open"
    done < <(services)
    echo "the local stack is up; tools/stack.sh stop stops it"
}

status() {
    local pid name url open rc=0
    pid=$(honcho_pid)
    load_settings
    if [ -z "$pid" ]; then
        echo "the local stack in $STACK_DIR is not running"
        return 1
    fi
    echo "the local stack in $STACK_DIR (honcho pid $pid):"
    while IFS='|' read -r name url open; do
        if http_ok "$url"; then
            printf '  %-10s up    %s\n' "$name" "$open"
        else
            printf '  %-10s down  %s\n' "$name" "$open"; rc=1
        fi
    done < <(services)
    return $rc
}

stop() {
    local pid
    pid=$(honcho_pid)
    if [ -z "$pid" ]; then
        echo "the local stack in $STACK_DIR is not running"
        rm -f "$PID_FILE"
        return 0
    fi
    # Recorded before the signal: once honcho exits, its orphans would no longer be below it.
    local procs
    mapfile -t procs < <(descendants "$pid")
    procs+=("$pid")
    echo "stopping the local stack (SIGTERM to honcho pid $pid, which stops ${#procs[@]} processes)"
    kill -TERM "$pid"
    # honcho sends SIGTERM to each service's process group and SIGKILL after 5 s.
    local left deadline=$((SECONDS + 30))
    while :; do
        left=()
        for p in "${procs[@]}"; do
            if alive "$p"; then left+=("$p"); fi
        done
        [ ${#left[@]} -gt 0 ] || break
        if [ $SECONDS -ge $deadline ]; then
            echo "still running after 30 s, killed: ${left[*]}" >&2
            kill -KILL "${left[@]}" 2>/dev/null || true
            rm -f "$PID_FILE"
            return 1
        fi
        sleep 0.2
    done
    rm -f "$PID_FILE"
    echo "the local stack stopped; every one of its processes is gone"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) usage ;;
esac
