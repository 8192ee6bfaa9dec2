#!/usr/bin/env bash
# The main job, end to end, on a fresh machine (installs uv and the environment itself):
# train penguins -> evaluate -> export to ONNX -> serve over REST and gRPC -> one request on each
# -> stop the server. Everything it writes goes under $1 (default: runs/demo).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
ensure_uv
sync_workspace
mlp=.venv/bin/mlp
out=$(mkdir -p "${1:-runs/demo}" && cd "${1:-runs/demo}" && pwd)

step "mlp doctor"
$mlp doctor

step "train: examples/penguins (species from every column; categoricals and missing values)"
run=$($mlp train examples/penguins --run-dir "$out/runs" | tail -n 1)
echo "run folder: $run"

step "evaluate: the test split, recomputed from the saved model"
$mlp evaluate "$run" --split test

step "export: ONNX with the preprocessing folded in, parity-checked against torch"
$mlp export "$run" --repo "$out/repo" --name penguins

step "serve: REST and gRPC in one process"
log="$out/serve.log"
$mlp serve "$out/repo" --http-port 0 --grpc-port 0 >"$log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
    grep -q "^mlp serve: REST on" "$log" && break
    kill -0 $server 2>/dev/null || { cat "$log"; exit 1; }
    sleep 0.5
done
ports=$(grep "^mlp serve: REST on" "$log")
echo "$ports"
http=$(sed -E 's#.*REST on (http://[^,]+),.*#\1#' <<<"$ports")
grpc=$(sed -E 's#.*gRPC on ([^ ]+).*#\1#' <<<"$ports")

step "REST: raw rows (the third has an unseen island and a missing sex and body mass)"
$mlp predict penguins --url "$http" --json examples/penguins/requests.json

step "gRPC (Open Inference Protocol): the same rows"
$mlp predict penguins --grpc "$grpc" --json examples/penguins/requests.json

step "stop: SIGTERM drains in-flight requests and exits 0"
kill -TERM $server
wait $server
trap - EXIT
echo "server stopped cleanly; everything is under $out"
