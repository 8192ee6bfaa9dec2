#!/usr/bin/env bash
# The main job, end to end, on a fresh machine (installs uv and the environment itself):
# train penguins -> evaluate -> export to ONNX -> serve over REST and gRPC -> one request on each
# -> stop the server -> a summary with the next commands to try. Everything it writes goes under
# $1 (default: runs/demo).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
ensure_uv
sync_workspace
mlp=.venv/bin/mlp
out=$(mkdir -p "${1:-runs/demo}" && cd "${1:-runs/demo}" && pwd)

step "mlp doctor"
$mlp doctor

# A path as a person would type it from the project root.
here() { case "$1" in "$ROOT"/*) echo "${1#"$ROOT"/}" ;; *) echo "$1" ;; esac; }
# One value of a JSON document, by a Python expression on `d` (the workspace has Python; jq may not).
field() { .venv/bin/python -c "import json, sys; d = json.loads(sys.argv[1]); print($2)" "$1"; }

step "train: examples/penguins (species from every column; categoricals and missing values)"
trained=$($mlp train examples/penguins --run-dir "$out/runs")
head -n -1 <<<"$trained"
run=$(tail -n 1 <<<"$trained")
echo "run folder: $run"

step "evaluate: the test split, recomputed from the saved model"
evaluated=$($mlp evaluate "$run" --split test)
echo "$evaluated"

step "export: ONNX with the preprocessing folded in, parity-checked against torch"
exported=$($mlp export "$run" --repo "$out/repo" --name penguins)
echo "$exported"
bundle=$(tail -n 1 <<<"$exported")
export_json=$(tail -n 2 <<<"$exported" | head -n 1)

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
echo "server stopped cleanly"

step "done: what you have, and what to try next"
accuracy=$(field "$evaluated" 'd["test.accuracy"]')
parity=$(field "$export_json" '"passed" if d["parity"]["passed"] else "FAILED"')
diff=$(field "$export_json" '"%.1e over %d rows" % (d["parity"]["max_abs_diff"], d["parity"]["samples"])')
store=$(field "$export_json" 'd["mlflow"].get("tracking_uri") or ""')
provider=$(grep -o 'penguins/1: runs on [A-Za-z]*' "$log" | sed 's/.*runs on //' || true)
echo "  model    penguins (tabular MLP): test accuracy $accuracy"
echo "  run      $(here "$run")  (plots/, metrics.json, log.jsonl)"
echo "  bundle   $(here "$bundle")  (parity with torch: $parity, max |diff| $diff)"
echo "  served   REST $http, gRPC $grpc, on ${provider:-?}  (log: $(here "$log"))"
echo "  next"
echo "    .venv/bin/mlp serve $(here "$out/repo")    # REST on :8000, gRPC on :8001"
echo "    .venv/bin/mlp predict penguins --url http://127.0.0.1:8000 --json examples/penguins/requests.json"
if [ -n "$store" ]; then
    echo "    .venv/bin/mlflow ui --backend-store-uri $store    # the run: metrics, plots, ONNX model"
fi
echo "  everything is under $(here "$out")"
