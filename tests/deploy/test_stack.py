"""The local stack without Docker (tools/stack.sh): real mlp serve, Prometheus and MLflow server.

One test, because starting the stack is what costs (MLflow creates its SQLite tables, and a fresh
stack trains and exports its penguins model first, tracked in the stack's own MLflow): start it
on free ports, then check what a person would look at, then stop it and require that every one
of its processes is gone and its ports are free again.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest
from stack_helpers import (
    ROOT,
    http_json,
    port_open,
    process_tree,
    running,
    stack,
    stack_env,
    wait_for,
)


def _log_tail(stack_dir: Path) -> str:
    log = stack_dir / "stack.log"
    return "\n".join(log.read_text().splitlines()[-60:]) if log.exists() else "(no log)"


@pytest.mark.slow
def test_local_stack_serves_scrapes_tracks_and_stops_cleanly(tmp_path):
    stack_dir = tmp_path / "stack"
    env = stack_env(stack_dir)
    ports = {name: int(env[f"MLP_STACK_{name}_PORT"]) for name in ("HTTP", "PROMETHEUS", "MLFLOW")}
    api = f"http://127.0.0.1:{ports['HTTP']}"
    prometheus = f"http://127.0.0.1:{ports['PROMETHEUS']}"
    mlflow = f"http://127.0.0.1:{ports['MLFLOW']}"

    started = stack("start", env)
    processes = []
    try:
        assert started.returncode == 0, started.stdout + started.stderr + _log_tail(stack_dir)
        processes = process_tree(int((stack_dir / "honcho.pid").read_text()))
        commands = " ".join(" ".join(p.cmdline()) for p in processes)
        for program in ("mlflow server", "prometheus --config.file", "mlp serve"):
            assert program in commands, commands

        status = stack("status", env)
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.count(" up ") == 3, status.stdout

        # The config the stack rendered (targets written for the chosen ports) is clean.
        rendered = stack_dir / "prometheus" / "prometheus.yml"
        promtool = subprocess.run(
            [shutil.which("promtool") or "promtool", "check", "config", str(rendered)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert promtool.returncode == 0, promtool.stdout + promtool.stderr
        assert "WARNING" not in promtool.stdout + promtool.stderr, promtool.stdout

        # The server answers: the penguins model the fresh stack trained and exported.
        rows = json.loads((ROOT / "examples/penguins/requests.json").read_text())
        reply = http_json(f"{api}/v1/models/penguins/predict", {"rows": rows})
        labels = [p["label"] for p in reply["predictions"]]
        assert len(labels) == len(rows) == 3, reply
        assert set(labels) <= {"Adelie", "Chinstrap", "Gentoo"}, reply

        # Prometheus scrapes it: the mlp-serve target is up, and the request above is counted.
        def serve_target():
            targets = http_json(f"{prometheus}/api/v1/targets")["data"]["activeTargets"]
            found = [t for t in targets if t["labels"]["job"] == "mlp-serve"]
            return found if found and found[0]["health"] == "up" else None

        target = wait_for(serve_target, 60, "the mlp-serve target never came up")
        assert target[0]["scrapeUrl"] == f"{api}/metrics", target

        def requests_counted():
            query = urllib.parse.quote('sum(mlp_inference_requests_total{job="mlp-serve"})')
            result = http_json(f"{prometheus}/api/v1/query?query={query}")["data"]["result"]
            return result if result and float(result[0]["value"][1]) >= 1 else None

        wait_for(requests_counted, 60, "Prometheus never saw the REST request")

        # MLflow shows the run that trained the served model, with its metrics and artifacts
        # (stored through the server's artifact proxy in the stack's folder).
        experiments = http_json(f"{mlflow}/api/2.0/mlflow/experiments/search", {"max_results": 50})
        ids = [e["experiment_id"] for e in experiments["experiments"]]
        runs = http_json(
            f"{mlflow}/api/2.0/mlflow/runs/search", {"experiment_ids": ids, "max_results": 10}
        ).get("runs", [])
        finished = [r for r in runs if r["info"]["status"] == "FINISHED"]
        assert len(finished) == 1, runs
        run = finished[0]
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        assert metrics["final.test.accuracy"] >= 0.8, metrics
        params = {p["key"]: p["value"] for p in run["data"].get("params", [])}
        assert params.get("training.epochs") == "2", params
        artifacts = http_json(
            f"{mlflow}/api/2.0/mlflow/artifacts/list?run_id={run['info']['run_id']}"
        ).get("files", [])
        assert "metrics.json" in {a["path"] for a in artifacts}, artifacts
        assert any((stack_dir / "mlflow" / "artifacts").rglob("metrics.json"))
    finally:
        stopped = stack("stop", env)

    assert stopped.returncode == 0, stopped.stdout + stopped.stderr + _log_tail(stack_dir)
    assert running(processes) == [], _log_tail(stack_dir)
    assert [name for name, port in ports.items() if port_open(port)] == []
    assert stack("status", env).returncode == 1
