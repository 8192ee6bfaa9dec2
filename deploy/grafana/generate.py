"""Generate the Grafana dashboards of mlp (as Ray does: Python in, JSON committed).

    python deploy/grafana/generate.py            # rewrite deploy/grafana/dashboards/*.json
    python deploy/grafana/generate.py --check    # exit 1 if the committed files differ
    python deploy/grafana/generate.py --out DIR  # write them elsewhere

The JSON files are what Grafana's file provider loads (provisioning/dashboards/mlp.yml); edit this
file, never the JSON (tests/deploy/test_dashboards_live.py fails when they drift apart, and runs
every panel's expression against a real Prometheus). Metric names are mlp_obs.metrics'. Only the
standard library: it runs in CI and in a bare checkout.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
DASHBOARDS = HERE / "dashboards"
# The uid of provisioning/datasources/prometheus.yml: panels name their datasource by it.
DATASOURCE = {"type": "prometheus", "uid": "mlp-prometheus"}
SCHEMA_VERSION = 39
RATE = "$__rate_interval"  # Grafana's: at least four scrape intervals (the datasource's 15s)


@dataclass
class Target:
    expr: str
    legend: str = ""
    instant: bool = False


@dataclass
class Panel:
    title: str
    targets: list[Target]
    description: str
    unit: str = "short"
    kind: str = "timeseries"  # or "stat", "table"
    width: int = 12
    height: int = 8


@dataclass
class Row:
    title: str
    panels: list[Panel] = field(default_factory=list)


def quantile(q: float, family: str, selector: str, by: str) -> str:
    return (
        f"histogram_quantile({q}, sum by ({by}, le) (rate({family}_bucket{{{selector}}}[{RATE}])))"
    )


# -- serving -----------------------------------------------------------------------------------

SERVE = 'job=~"$job", model=~"$model"'
SERVE_JOB = 'job=~"$job"'


def serving_rows() -> list[Row]:
    requests = "mlp_inference_requests_total"
    return [
        Row(
            "Traffic",
            [
                Panel(
                    "Requests/s by model, version and protocol",
                    [
                        Target(
                            f"sum by (model, version, protocol) "
                            f"(rate({requests}{{{SERVE}}}[{RATE}]))",
                            "{{model}} v{{version}} {{protocol}}",
                        )
                    ],
                    "Requests answered per second, whatever their status.",
                    unit="reqps",
                ),
                Panel(
                    "Errors/s by status",
                    [
                        Target(
                            f'sum by (model, version, protocol, status) (rate({requests}{{{SERVE}, status!="ok"}}[{RATE}]))',
                            "{{model}} v{{version}} {{protocol}} {{status}}",
                        )
                    ],
                    "Failed requests per second by status: invalid_input and not_found are the "
                    "client's, error is internal, unavailable a model not ready, queue_full a 503 "
                    "from a full queue (model _unknown: a name the repository does not hold).",
                    unit="reqps",
                ),
                Panel(
                    "Requests in flight",
                    [
                        Target(
                            f"sum by (model, version, protocol) "
                            f"(mlp_inference_in_flight_requests{{{SERVE}}})",
                            "{{model}} v{{version}} {{protocol}}",
                        )
                    ],
                    "Requests being answered now: the HPA's signal besides queue time.",
                ),
                Panel(
                    "Error ratio",
                    [
                        Target(
                            f'sum by (model, version) (rate({requests}{{{SERVE}, status=~"error|unavailable|queue_full"}}[{RATE}])) / sum by (model, version) (rate({requests}{{{SERVE}}}[{RATE}]))',
                            "{{model}} v{{version}}",
                        )
                    ],
                    "Share of requests that failed on the server's side (what MlpHighErrorRate "
                    "alerts on above 5%).",
                    unit="percentunit",
                ),
            ],
        ),
        Row(
            "Latency",
            [
                Panel(
                    "Request latency p50 / p99",
                    [
                        Target(
                            quantile(
                                q,
                                "mlp_inference_request_duration_seconds",
                                SERVE,
                                "model, version",
                            ),
                            f"{{{{model}}}} v{{{{version}}}} p{round(q * 100)}",
                        )
                        for q in (0.5, 0.99)
                    ],
                    "Time from receiving a request to answering it (MlpHighP99Latency alerts on "
                    "p99 above 500 ms).",
                    unit="s",
                ),
                Panel(
                    "Queue time p50 / p99",
                    [
                        Target(
                            quantile(
                                q,
                                "mlp_inference_queue_duration_seconds",
                                SERVE,
                                "model, version",
                            ),
                            f"{{{{model}}}} v{{{{version}}}} p{round(q * 100)}",
                        )
                        for q in (0.5, 0.99)
                    ],
                    "Time a request waited before its batch ran: long queues mean too little "
                    "capacity.",
                    unit="s",
                ),
                Panel(
                    "Compute time p99 by provider",
                    [
                        Target(
                            quantile(
                                0.99,
                                "mlp_inference_compute_duration_seconds",
                                SERVE,
                                "model, version, provider",
                            ),
                            "{{model}} v{{version}} {{provider}}",
                        )
                    ],
                    "Time the model took to run one batch, by onnxruntime execution provider.",
                    unit="s",
                ),
                Panel(
                    "Batch size (mean and p99)",
                    [
                        Target(
                            f"sum by (model, version) "
                            f"(rate(mlp_inference_batch_size_sum{{{SERVE}}}[{RATE}])) / "
                            f"sum by (model, version) "
                            f"(rate(mlp_inference_batch_size_count{{{SERVE}}}[{RATE}]))",
                            "{{model}} v{{version}} mean",
                        ),
                        Target(
                            quantile(0.99, "mlp_inference_batch_size", SERVE, "model, version"),
                            "{{model}} v{{version}} p99",
                        ),
                    ],
                    "Rows or images per model execution: dynamic batching at work.",
                ),
            ],
        ),
        Row(
            "Models",
            [
                Panel(
                    "Models loaded",
                    [Target(f"sum(mlp_inference_models_loaded{{{SERVE_JOB}}})", "loaded")],
                    "Model versions loaded and ready over the selected servers (0 on a server: "
                    "MlpNoModelReady).",
                    kind="stat",
                    width=6,
                ),
                Panel(
                    "Servers up",
                    [Target(f"sum(up{{{SERVE_JOB}}})", "up")],
                    "Targets of the selected jobs that Prometheus scrapes (MlpTargetDown).",
                    kind="stat",
                    width=6,
                ),
                Panel(
                    "Loaded versions and providers",
                    [
                        Target(
                            f"max by (instance, model, version, provider) "
                            f"(mlp_inference_model_info{{{SERVE}}})",
                            instant=True,
                        )
                    ],
                    "Each loaded model version and the execution provider that runs it (a CPU "
                    "provider where a GPU was expected is a fallback).",
                    kind="table",
                ),
            ],
        ),
        Row("Resources", resource_panels(SERVE_JOB, by="instance")),
    ]


def resource_panels(selector: str, by: str) -> list[Panel]:
    """CPU, memory and GPU of the machine and of the processes of ``selector``'s targets."""
    return [
        Panel(
            "CPU",
            [
                Target(f"mlp_system_cpu_utilization_ratio{{{selector}}}", "machine {{instance}}"),
                Target(
                    f"sum by ({by}) (rate(process_cpu_seconds_total{{{selector}}}[{RATE}]))",
                    f"process {{{{{by}}}}}",
                ),
            ],
            "Machine CPU utilisation (0 to 1) and the process's CPU seconds per second (1 = one "
            "core busy).",
            unit="percentunit",
        ),
        Panel(
            "Memory",
            [
                Target(f"mlp_system_memory_used_bytes{{{selector}}}", "machine used {{instance}}"),
                Target(
                    f"mlp_system_memory_total_bytes{{{selector}}}", "machine total {{instance}}"
                ),
                Target(
                    f"sum by ({by}) (process_resident_memory_bytes{{{selector}}})",
                    f"process RSS {{{{{by}}}}}",
                ),
            ],
            "Machine memory in use (total minus available) and the process's resident memory.",
            unit="bytes",
        ),
        Panel(
            "GPU utilisation",
            [
                Target(
                    f"mlp_gpu_utilization_ratio{{{selector}}}",
                    "{{instance}} GPU {{gpu}} {{name}}",
                )
            ],
            "GPU busy time per GPU that NVML sees (empty on a machine without an NVIDIA GPU).",
            unit="percentunit",
        ),
        Panel(
            "GPU memory",
            [
                Target(
                    f"mlp_gpu_memory_used_bytes{{{selector}}} / "
                    f"mlp_gpu_memory_total_bytes{{{selector}}}",
                    "{{instance}} GPU {{gpu}} {{name}}",
                )
            ],
            "Share of each GPU's memory in use (MlpGpuMemoryHigh alerts above 95%; empty "
            "without an NVIDIA GPU).",
            unit="percentunit",
        ),
    ]


# -- training ----------------------------------------------------------------------------------

TRAIN = 'job=~"$job", run=~"$run"'
TRAIN_JOB = 'job=~"$job"'


def training_rows() -> list[Row]:
    return [
        Row(
            "Progress",
            [
                Panel(
                    "Loss by run and split",
                    [
                        Target(
                            f"max by (run, split) (mlp_training_loss{{{TRAIN}}})",
                            "{{run}} {{split}}",
                        )
                    ],
                    "Latest loss of each split, per epoch. The ranks of a DDP run hold the "
                    "same synced value: one line per run.",
                ),
                Panel(
                    "Metrics by run",
                    [
                        Target(
                            f"max by (run, split, metric) (mlp_training_metric{{{TRAIN}}})",
                            "{{run}} {{split}} {{metric}}",
                        )
                    ],
                    "Latest evaluation metrics of each split (accuracy, F1, RMSE, ...).",
                ),
                Panel(
                    "Epochs completed",
                    [
                        Target(
                            f"max by (run) (mlp_training_epochs_total{{{TRAIN}}})",
                            "{{run}}",
                        )
                    ],
                    "Epochs each run has finished.",
                    kind="stat",
                    width=6,
                ),
                Panel(
                    "Ranks exposing",
                    [Target(f"count by (run) (mlp_training_steps_total{{{TRAIN}}})", "{{run}}")],
                    "Processes (DDP ranks) of each run that Prometheus scrapes.",
                    kind="stat",
                    width=6,
                ),
            ],
        ),
        Row(
            "Throughput",
            [
                Panel(
                    "Step rate by rank",
                    [
                        Target(
                            f"sum by (run, rank) "
                            f"(rate(mlp_training_steps_total{{{TRAIN}}}[{RATE}]))",
                            "{{run}} rank {{rank}}",
                        )
                    ],
                    "Optimizer steps per second of each rank: a slow rank (a straggler) holds "
                    "every other one back.",
                    unit="ops",
                ),
                Panel(
                    "Samples/s",
                    [
                        Target(
                            f"sum by (run) (mlp_training_samples_per_second{{{TRAIN}}})",
                            "{{run}} all ranks",
                        )
                    ],
                    "Training throughput of the latest epoch, summed over the ranks.",
                ),
                Panel(
                    "Epoch duration by rank",
                    [
                        Target(
                            f"sum by (run, rank) (mlp_training_epoch_duration_seconds_sum"
                            f"{{{TRAIN}}}) / sum by (run, rank) "
                            f"(mlp_training_epoch_duration_seconds_count{{{TRAIN}}})",
                            "{{run}} rank {{rank}} mean",
                        )
                    ],
                    "Mean wall time of an epoch so far, per rank.",
                    unit="s",
                ),
            ],
        ),
        Row("Resources", resource_panels(TRAIN_JOB, by="rank")),
    ]


# -- rendering ---------------------------------------------------------------------------------


def variable(name: str, label: str, query: str) -> dict:
    """A multi-value query variable that defaults to All (any value: allValue .*)."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-variable"},
        "definition": query,
        "refresh": 2,  # on time range change: new models and runs appear
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def render_panel(panel: Panel, panel_id: int, x: int, y: int) -> dict:
    custom = {"lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
    document: dict = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": panel.width, "h": panel.height},
        "fieldConfig": {
            "defaults": {
                "unit": panel.unit,
                **({"custom": custom} if panel.kind == "timeseries" else {}),
            },
            "overrides": [],
        },
        "targets": [
            {
                "refId": chr(ord("A") + index),
                "datasource": DATASOURCE,
                "expr": target.expr,
                "legendFormat": target.legend or "__auto",
                "range": not target.instant,
                "instant": target.instant,
                **({"format": "table"} if panel.kind == "table" else {}),
            }
            for index, target in enumerate(panel.targets)
        ],
    }
    if panel.kind == "timeseries":
        document["options"] = {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    elif panel.kind == "stat":
        document["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"}
    else:
        document["transformations"] = [
            {"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True}}}
        ]
    return document


def render(uid: str, title: str, description: str, rows: list[Row], variables: list[dict]) -> dict:
    panels, panel_id, y = [], 1, 0
    for row in rows:
        panels.append(
            {
                "id": panel_id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
                "panels": [],
            }
        )
        panel_id, y, x, row_height = panel_id + 1, y + 1, 0, 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y, row_height = 0, y + row_height, 0
            panels.append(render_panel(panel, panel_id, x, y))
            panel_id, x, row_height = panel_id + 1, x + panel.width, max(row_height, panel.height)
        y += row_height
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["mlp"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": False,
        "graphTooltip": 1,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "timezone": "",
        "templating": {"list": variables},
        "annotations": {"list": []},
        "panels": panels,
    }


def dashboards() -> dict[str, dict]:
    """File name -> dashboard document."""
    return {
        "mlp-serving.json": render(
            "mlp-serving",
            "mlp serving",
            "mlp serve: traffic, errors, latency, batching, models and resources.",
            serving_rows(),
            [
                variable("job", "Job", "label_values(mlp_inference_models_loaded, job)"),
                variable(
                    "model",
                    "Model",
                    'label_values(mlp_inference_requests_total{job=~"$job"}, model)',
                ),
            ],
        ),
        "mlp-training.json": render(
            "mlp-training",
            "mlp training",
            "mlp train with training.prometheus.port: loss, metrics, throughput per rank, "
            "resources.",
            training_rows(),
            [
                variable("job", "Job", "label_values(mlp_training_epochs_total, job)"),
                variable("run", "Run", 'label_values(mlp_training_epochs_total{job=~"$job"}, run)'),
            ],
        ),
    }


def dump(document: dict) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DASHBOARDS, help="folder to write into")
    parser.add_argument("--check", action="store_true", help="compare with the files in --out")
    args = parser.parse_args(argv)
    drifted = []
    for name, document in dashboards().items():
        path, text = args.out / name, dump(document)
        if args.check:
            current = path.read_text(encoding="utf-8") if path.exists() else ""
            if current != text:
                drifted.append(name)
                diff = difflib.unified_diff(
                    current.splitlines(), text.splitlines(), str(path), "generated", lineterm=""
                )
                print("\n".join(list(diff)[:40]), file=sys.stderr)
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if drifted:
        print(
            f"out of date: {', '.join(drifted)}; run python {Path(__file__).name}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
