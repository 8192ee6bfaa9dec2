#!/usr/bin/env bash
# The wheels are the truth: build every package, then install some of them ALONE from the
# built wheels into a fresh venv outside the workspace and run them there.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
ensure_uv >/dev/null

dist="$ROOT/dist"
work=$(mktemp -d "${TMPDIR:-/tmp}/mlp-wheelcheck.XXXXXX")
trap 'rm -rf "$work"' EXIT

step "building every package"
rm -rf "$dist"
(cd "$ROOT" && uv build --all-packages --out-dir "$dist" --quiet)
wheels=("$dist"/*.whl)
echo "built ${#wheels[@]} wheels:"; printf '  %s\n' "${wheels[@]##*/}"
[ ${#wheels[@]} -eq 6 ] || { echo "expected 6 wheels"; exit 1; }

wheel() { ls "$dist"/"$1"-*.whl; }

banned_in() {  # banned_in VENV PACKAGE...: fail if the venv holds any of the packages
    local venv=$1; shift
    local listing
    listing=$(uv pip list --python "$venv/bin/python" 2>/dev/null | awk '{print tolower($1)}')
    for banned in "$@"; do
        if grep -qx "$banned" <<<"$listing"; then echo "$venv holds $banned"; return 1; fi
    done
}

step "mlp-core + mlp-obs alone, from the wheels, in a fresh venv"
uv venv --quiet --python 3.11 "$work/obs"
uv pip install --quiet --python "$work/obs/bin/python" "$(wheel mlp_core)" "$(wheel mlp_obs)"
cd "$work"  # nothing of the workspace on the path
"$work/obs/bin/mlp" --version
"$work/obs/bin/mlp" doctor
banned_in "$work/obs" torch onnxruntime onnxruntime-gpu grpcio mlflow-skinny
echo "no torch, onnxruntime, grpcio or mlflow in mlp-core + mlp-obs"
"$work/obs/bin/python" - <<'PY'
# Without the mlflow extra a run is still recorded, as JSON lines in the run folder.
import json, pathlib, tempfile
from mlp_obs.tracking import create_tracker
run_dir = pathlib.Path(tempfile.mkdtemp())
with create_tracker(run_dir, runs_root=run_dir) as tracker:
    tracker.start_run("wheel-check")
    tracker.log_params({"training": {"epochs": 2}})
    tracker.log_metrics({"loss": 0.5}, step=1)
events = [json.loads(line) for line in (run_dir / "tracking.jsonl").read_text().splitlines()]
assert any(e.get("params", {}).get("training.epochs") == "2" for e in events), events
print(f"tracked without MLflow: {len(events)} events in tracking.jsonl")
PY

step "mlp-obs[mlflow] from the wheels: a run tracked to the default SQLite store"
uv pip install --quiet --python "$work/obs/bin/python" "$(wheel mlp_obs)[mlflow]"
"$work/obs/bin/python" - <<'PY'
import pathlib, tempfile
from mlflow.tracking import MlflowClient
from mlp_obs.tracking import create_tracker, tracking_uri
root = pathlib.Path(tempfile.mkdtemp())
with create_tracker(root / "run", runs_root=root) as tracker:
    run_id = tracker.start_run("wheel-check")
    tracker.log_metrics({"loss": 0.25}, step=3)
history = MlflowClient(tracking_uri(root)).get_metric_history(run_id, "loss")
assert [(m.step, m.value) for m in history] == [(3, 0.25)], history
print("tracked to", tracking_uri(root))
PY


step "mlp-train alone (and the mlp packages it depends on), from the wheels, in a fresh venv"
uv venv --quiet --python 3.11 "$work/train"
uv pip install --quiet --python "$work/train/bin/python" \
    "$(wheel mlp_train)" "$(wheel mlp_core)" "$(wheel mlp_obs)" "$(wheel mlp_data)" "$(wheel mlp_models)"
banned_in "$work/train" grpcio onnxruntime onnxruntime-gpu mlp-serve
echo "mlp-train pulled no grpcio, no onnxruntime, no mlp-serve"
"$work/train/bin/mlp" --version
run_dir=$("$work/train/bin/mlp" train "$ROOT/examples/penguins" \
    --set "data.path=$ROOT/examples/data/penguins.csv" --set training.progress=none \
    --run-dir "$work/runs" | tail -n 1)
python3 - "$run_dir" <<'PY'
import json, sys
metrics = json.load(open(f"{sys.argv[1]}/metrics.json"))
print(f"penguins trained from the wheels: test accuracy {metrics['test.accuracy']:.3f}")
assert metrics["test.accuracy"] >= 0.95, metrics
PY

step "mlp-serve as the serve image installs it: no torch in it; it serves a tabular and a detection bundle"
# What deploy/docker/serve.Dockerfile does: the same wheelhouse script (these wheels and the
# lock's third-party ones), then its install line word for word but for the two paths
# (tests/deploy/test_images.py holds the two to it). PIP_CACHE_DIR keeps a rerun local.
"$ROOT/deploy/docker/wheelhouse.sh" "$work/wheelhouse" "$dist" --package mlp-serve
uv venv --quiet --python 3.11 "$work/serve"
uv pip install --python "$work/serve/bin/python" --no-index --find-links "$work/wheelhouse" --no-cache mlp-serve
banned_in "$work/serve" torch torchvision mlp-models mlp-data mlp-train
echo "mlp-serve pulled no torch, torchvision, mlp-models, mlp-data or mlp-train"
runtimes=$(uv pip list --python "$work/serve/bin/python" 2>/dev/null \
    | awk 'tolower($1) ~ /^onnxruntime(-gpu)?$/ {print $1}')
[ "$(wc -l <<<"$runtimes")" -eq 1 ] || { echo "expected one onnxruntime, got: $runtimes"; exit 1; }
echo "one onnxruntime: $runtimes"
"$work/serve/bin/mlp" --version
# Training and export need torch: the bundle comes from the workspace environment.
serve_run=$("$ROOT/.venv/bin/mlp" train "$ROOT/examples/penguins" \
    --set "data.path=$ROOT/examples/data/penguins.csv" --set training.epochs=3 \
    --set training.progress=none --run-dir "$work/serve-runs" | tail -n 1)
"$ROOT/.venv/bin/mlp" export "$serve_run" --repo "$work/repo" --name penguins --no-mlflow \
    | tail -n 1
# A detection bundle beside it (trained through ultralytics in the workspace; served without it).
shapes_run=$("$ROOT/.venv/bin/mlp" train "$ROOT/examples/shapes" \
    --set "data.path=$work/shapes-data" --set training.epochs=1 \
    --set training.progress=none --run-dir "$work/serve-runs" | tail -n 1)
"$ROOT/.venv/bin/mlp" export "$shapes_run" --repo "$work/repo" --name shapes --no-mlflow \
    | tail -n 1
log="$work/serve.log"
# compose.yaml's api command: every address, the tokens from the serve config secret (its example).
secret="$ROOT/deploy/compose/secrets/serve-auth.yaml.example"
token=$("$work/serve/bin/python" -c \
    'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["auth_token"])' "$secret")
ORT_DISABLE_TELEMETRY=1 "$work/serve/bin/mlp" serve "$work/repo" --host 0.0.0.0 \
    --http-port 0 --grpc-port 0 --config "$secret" >"$log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 120); do
    grep -q "^mlp serve: REST on" "$log" && break
    kill -0 $server 2>/dev/null || { cat "$log"; exit 1; }
    sleep 0.5
done
ports=$(grep "^mlp serve: REST on" "$log") || { cat "$log"; echo "mlp serve never got ready"; exit 1; }
echo "$ports"
# Bound on 0.0.0.0: asked on loopback.
http=$(sed -E 's#.*REST on http://[^:]+:([0-9]+),.*#http://127.0.0.1:\1#' <<<"$ports")
grpc=$(sed -E 's#.*gRPC on [^ ]*:([0-9]+).*#127.0.0.1:\1#' <<<"$ports")
python3 - "$http" "$ROOT/examples/penguins/requests.json" "$token" >"$work/rest.json" <<'PY'
# Plain urllib: what a client with nothing installed sends. The image's HEALTHCHECK asks
# /v2/health/ready without a token; inference without the token is refused.
import json, sys, urllib.error, urllib.request
http, rows, token = sys.argv[1], json.load(open(sys.argv[2])), sys.argv[3]
with urllib.request.urlopen(f"{http}/v2/health/ready", timeout=10) as reply:
    assert reply.status == 200, reply.status
def predict(headers):
    request = urllib.request.Request(
        f"{http}/v1/models/penguins/predict",
        data=json.dumps({"rows": rows}).encode(),
        headers={"Content-Type": "application/json", **headers},
    )
    return urllib.request.urlopen(request, timeout=60)
try:
    predict({})
    raise AssertionError("inference without the token was answered")
except urllib.error.HTTPError as refused:
    assert refused.code == 401, refused.code
with predict({"Authorization": f"Bearer {token}"}) as reply:
    assert reply.status == 200, reply.status
    print(reply.read().decode())
PY
"$work/serve/bin/mlp" predict penguins --grpc "$grpc" --token "$token" \
    --json "$ROOT/examples/penguins/requests.json" >"$work/grpc.json"
python3 - "$work/rest.json" "$work/grpc.json" <<'PY'
import json, sys
rest, grpc = (json.load(open(path))["predictions"] for path in sys.argv[1:])
assert len(rest) == len(grpc) == 3, (rest, grpc)
for a, b in zip(rest, grpc):
    assert a["label"] == b["label"] and a["label"] in a["probabilities"], (a, b)
    assert abs(sum(a["probabilities"].values()) - 1) < 1e-5, a
    assert all(abs(a["probabilities"][k] - b["probabilities"][k]) < 1e-6 for k in a["probabilities"])
print("REST /v1 and gRPC answered alike:", [a["label"] for a in rest])
PY
"$work/serve/bin/python" - "$http" "$token" "$work/shapes-data/images/test/test_00000.png" <<'PY'
# A PNG upload to the detection bundle: boxes in the image's pixels, no torch or ultralytics here.
import sys
import httpx
http, token, image = sys.argv[1:]
with open(image, "rb") as file:
    png = file.read()
reply = httpx.post(
    f"{http}/v1/models/shapes/predict/image",
    params={"confidence": "0.001"},  # one epoch of training: low scores, but boxes
    files={"file": ("shape.png", png, "image/png")},
    headers={"Authorization": f"Bearer {token}"},
    timeout=60,
)
assert reply.status_code == 200, reply.text
[found] = reply.json()["predictions"]
assert found, "no boxes at confidence 0.001"
for detection in found:
    assert set(detection) == {"box", "score", "class_id", "label"}, detection
    x1, y1, x2, y2 = detection["box"]
    assert 0 <= x1 <= x2 <= 64 and 0 <= y1 <= y2 <= 64, detection
print(f"the detection bundle answered {len(found)} boxes; the best: {found[0]}")
PY
kill -TERM $server
status=0
wait $server || status=$?
trap 'rm -rf "$work"' EXIT
[ $status -eq 0 ] || { cat "$log"; echo "mlp serve exited $status after SIGTERM"; exit 1; }
echo "mlp serve (from the wheels, no torch) served tabular and detection bundles, drained and exited 0 on SIGTERM"

echo "wheel check passed"
