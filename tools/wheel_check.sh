#!/usr/bin/env bash
# The wheels are the truth: build every package, then install some of them ALONE from the
# built wheels into a fresh venv outside the workspace and run them there.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
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

echo "wheel check passed"
