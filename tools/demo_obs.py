"""A small run through the observability layer: logs, Prometheus metrics and MLflow tracking.

It fits a least-squares line to noisy points by gradient descent (numpy only) and records the
run the way the trainer will: structured logs (console + JSON lines), training metrics exposed
over HTTP and scraped back, params/metrics/artifacts tracked and read back from the store.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from mlp_core.config import flatten
from mlp_core.runs import new_run_dir
from mlp_core.seeding import seed_everything
from mlp_obs.log import bind_context, configure_logging, get_logger
from mlp_obs.metrics import TrainingMetrics, register_system_metrics, start_metrics_server
from mlp_obs.tracking import create_tracker, tracking_uri

CONFIG = {"training": {"epochs": 5, "steps_per_epoch": 20, "lr": 0.1, "seed": 42}}


def main(runs_root: Path) -> None:
    run_dir = new_run_dir(runs_root, "obs-demo")
    configure_logging(json_file=run_dir / "log.jsonl")
    log = get_logger("demo")
    registry = register_system_metrics(CollectorRegistry())
    metrics = TrainingMetrics(registry)
    server, port = start_metrics_server(0, registry=registry)

    seed_everything(CONFIG["training"]["seed"])
    x = np.random.rand(256)
    y = 3.0 * x + 0.5 + np.random.normal(0, 0.05, size=x.shape)
    w = b = 0.0
    tracker = create_tracker(run_dir, runs_root=runs_root)
    run_id = tracker.start_run(run_dir.name, experiment="obs-demo")
    with tracker, bind_context(run_id=run_id):
        tracker.log_params(CONFIG)
        cfg = CONFIG["training"]
        for epoch in range(cfg["epochs"]):
            start = time.perf_counter()
            for _ in range(cfg["steps_per_epoch"]):
                error = w * x + b - y
                w -= cfg["lr"] * 2 * float(np.mean(error * x))
                b -= cfg["lr"] * 2 * float(np.mean(error))
                metrics.step(run_id)
            loss = float(np.mean((w * x + b - y) ** 2))
            seconds = time.perf_counter() - start
            metrics.observe_epoch(
                run_id, seconds, len(x) * cfg["steps_per_epoch"], {"train": loss}, {}
            )
            tracker.log_metrics({"train.loss": loss, "w": w, "b": b}, step=epoch)
            log.info("epoch done", epoch=epoch, loss=round(loss, 5))
        (run_dir / "result.json").write_text(json.dumps({"w": w, "b": b}))
        tracker.log_artifact(run_dir / "result.json")

    scraped = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    server.shutdown()
    families = {f.name: f for f in text_string_to_metric_families(scraped)}
    steps = next(
        s.value for s in families["mlp_training_steps"].samples if s.name.endswith("_total")
    )
    print(
        f"prometheus: scraped {len(families)} metric families; mlp_training_steps_total = {steps:.0f}"
    )

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri(runs_root))
    run = client.get_run(run_id)
    params = {k: v for k, v in run.data.params.items() if k in flatten(CONFIG)}
    print(f"mlflow: run {run_id} {run.info.status} in {tracking_uri(runs_root)}")
    print(f"mlflow: params {params}, final train.loss {run.data.metrics['train.loss']:.5f}")
    print(f"fitted y = {w:.3f} x + {b:.3f} (true: 3.000 x + 0.500)")
    print(f"run folder: {run_dir}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs").resolve())
