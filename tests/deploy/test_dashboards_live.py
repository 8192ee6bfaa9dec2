"""The Grafana dashboards against a real Prometheus: every panel's expression returns data.

Prometheus (/usr/bin/prometheus, scraping every second) scrapes a real `mlp serve` that answers
REST and gRPC requests (and a few bad ones, for the error panels) and a real `mlp train` of the
penguins example with ``training.prometheus.port``. Then each dashboard variable is resolved the
way Grafana does (its ``label_values`` query through Prometheus's label API) and every panel's
expression is queried at a moment when both jobs were being scraped: each must return at least
one series with a number, so a dashboard that names a metric or label that does not exist fails.

GPU panels on a machine without an NVIDIA GPU: NVML reports none, mlp exposes no ``mlp_gpu_*``
series, and those panels are empty by nature. Exactly those expressions (the ones whose metrics
are all ``mlp_gpu_*``) are exempt from the non-empty check there, and only there; their metric
names must still be ones mlp_obs.metrics defines. On a GPU machine they are checked like the rest.

Also here, without Prometheus: regenerating the dashboards gives the committed JSON, and the
panels use the provisioned datasource.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import yaml
from obs_helpers import (
    GRAFANA,
    PROMETHEUS_BIN,
    ROOT,
    defined_sample_names,
    metric_names,
)
from serve_helpers import linear_model, write_bundle
from tritonclient.utils import InferenceServerException

from mlp_obs.gpu import GpuUnavailable, read_gpus

GENERATOR = GRAFANA / "generate.py"
DASHBOARD_FILES = ("mlp-serving.json", "mlp-training.json")
EPOCHS = 3
# Wide enough to hold the whole test: the load and the run fall in every rate window.
RATE_WINDOW = "5m"
STARTUP = re.compile(r"mlp serve: REST on (http://\S+), gRPC on (\S+)")
MODEL = "linear"
BROKEN = "broken"


def dashboards() -> dict[str, dict]:
    return {
        name: json.loads((GRAFANA / "dashboards" / name).read_text(encoding="utf-8"))
        for name in DASHBOARD_FILES
    }


def targets(dashboard: dict) -> Iterator[tuple[str, str]]:
    """(panel title, expression) of every query of every panel."""
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def is_gpu_only(expr: str) -> bool:
    names = metric_names(expr)
    return bool(names) and all(name.startswith("mlp_gpu_") for name in names)


# -- without Prometheus ------------------------------------------------------------------------


def test_regenerating_gives_the_committed_dashboards(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for name in DASHBOARD_FILES:
        committed = (GRAFANA / "dashboards" / name).read_text(encoding="utf-8")
        assert (tmp_path / name).read_text(encoding="utf-8") == committed, (
            f"{name} differs from generate.py's output: run python {GENERATOR.relative_to(ROOT)}"
        )
    check = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stderr


def test_the_panels_use_the_provisioned_datasource_and_known_metrics() -> None:
    provisioning = GRAFANA / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "mlp.yml").read_text())["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    defined = defined_sample_names()
    for name, dashboard in dashboards().items():
        panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
        assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
        for panel in panels:
            assert panel["targets"], f"{name}: {panel['title']} has no query"
            for target in [panel, *panel["targets"]]:
                assert target["datasource"] == {"type": "prometheus", "uid": source["uid"]}
        for title, expr in targets(dashboard):
            used = metric_names(expr)
            assert used and used <= defined, f"{name}: {title}: unknown {used - defined}"


# -- live --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(check, what: str, timeout: float = 60.0, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, httpx.HTTPError):
            value = check()
            if value:
                return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {process.returncode}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@dataclass
class Stack:
    prometheus: str  # http://127.0.0.1:PORT
    at: float  # a moment when both jobs were scraped, as a Unix time


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str | list[str]) -> dict:
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=30) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:  # a bad query: Prometheus says why
            raise AssertionError(f"{path} {params}: {error.read().decode()}") from error
        assert body["status"] == "success", body
        return body["data"]


def serve(repo: Path, log: Path) -> tuple[subprocess.Popen, str, str]:
    command = [sys.executable, "-m", "mlp_serve", str(repo), "--http-port", "0"]
    command += ["--grpc-port", "0", "--set", "poll_seconds=null"]
    command += ["--set", "providers=[CPUExecutionProvider]"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=log.open("w"), text=True, cwd=repo
    )
    deadline = time.monotonic() + 90
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        match = STARTUP.search(line)
        if match:
            return process, match.group(1), match.group(2)
        if not line and process.poll() is not None:
            break
    stop(process)
    raise AssertionError(f"mlp serve printed no startup line:\n{log.read_text()[-3000:]}")


def put_load(url: str, grpc_address: str) -> None:
    """REST and gRPC requests, concurrent ones (batches), and bad ones (error panels)."""
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": x.ravel().tolist()}]
    }
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(20):
            assert client.post(f"/v2/models/{MODEL}/infer", json=body).status_code == 200
        wrong = {"inputs": [{**body["inputs"][0], "shape": [2, 5]}]}
        assert client.post(f"/v2/models/{MODEL}/infer", json=wrong).status_code == 400
        assert client.post("/v2/models/nosuch/infer", json=body).status_code == 404
        assert client.post(f"/v2/models/{BROKEN}/infer", json=body).status_code == 503
    client = grpcclient.InferenceServerClient(grpc_address)
    try:
        tensor = grpcclient.InferInput("x", [2, 4], "FP32")
        tensor.set_data_from_numpy(x)
        for _ in range(10):
            assert client.infer(MODEL, [tensor]).as_numpy("y").shape == (2, 3)
        bad = grpcclient.InferInput("x", [2, 4], "INT64")
        bad.set_data_from_numpy(x.astype(np.int64))
        with pytest.raises(InferenceServerException):
            client.infer(MODEL, [bad])
    finally:
        client.close()
    # Concurrent requests, so that dynamic batching runs batches of more than one.
    with httpx.Client(base_url=url, timeout=30) as client, ThreadPoolExecutor(8) as pool:
        infer = f"/v2/models/{MODEL}/infer"
        codes = list(pool.map(lambda _: client.post(infer, json=body).status_code, range(32)))
    assert codes == [200] * 32


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not PROMETHEUS_BIN.exists():  # never skipped: CI installs Debian's prometheus
        pytest.fail(f"{PROMETHEUS_BIN} is missing: apt-get install prometheus")
    root = tmp_path_factory.mktemp("dashboards")
    repo = root / "models"
    write_bundle(repo, MODEL, 1, linear_model())
    # On disk but never ready (not ONNX): its requests are the server-side errors (503).
    write_bundle(repo, BROKEN, 1, b"not an onnx model")
    processes: list[subprocess.Popen] = []
    try:
        server, url, grpc_address = serve(repo, root / "serve.log")
        processes.append(server)
        prometheus_port, train_port = free_port(), free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": "mlp-serve",
                    "static_configs": [{"targets": [url.removeprefix("http://")]}],
                },
                {
                    "job_name": "mlp-train",
                    "static_configs": [{"targets": [f"127.0.0.1:{train_port}"]}],
                },
            ],
        }
        (root / "prometheus.yml").write_text(yaml.safe_dump(config))
        prometheus_url = f"http://127.0.0.1:{prometheus_port}"
        processes.append(
            subprocess.Popen(
                [
                    str(PROMETHEUS_BIN),
                    f"--config.file={root / 'prometheus.yml'}",
                    f"--storage.tsdb.path={root / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                    "--log.level=warn",
                ],
                stdout=subprocess.DEVNULL,
                stderr=(root / "prometheus.log").open("w"),
            )
        )
        wait_for(
            lambda: httpx.get(f"{prometheus_url}/-/ready").status_code == 200,
            "Prometheus ready",
            process=processes[-1],
        )
        api = Prometheus(prometheus_url)
        trainer = start_training(root, train_port, prometheus_url)
        processes.append(trainer)
        # Two rounds of load with a scrape between them: the series are born in the first (their
        # first sample is where Prometheus starts), and rates see them grow in the second.
        put_load(url, grpc_address)
        born = f'mlp_inference_requests_total{{model="{BROKEN}"}}'
        wait_for(lambda: api.get("/api/v1/query", query=born)["result"], "a scrape of the load")
        put_load(url, grpc_address)
        assert trainer.wait(timeout=240) == 0, (root / "train.log").read_text()[-4000:]
        yield Stack(prometheus_url, last_scrape_of_both(api))
    finally:
        for process in reversed(processes):
            stop(process)


def start_training(root: Path, port: int, prometheus: str) -> subprocess.Popen:
    callback = {"class": "obs_callbacks.AwaitScrape", "args": {"prometheus": prometheus}}
    settings = [
        f"data.path={ROOT / 'examples' / 'data' / 'penguins.csv'}",
        "training.device=cpu",
        "training.tracking.backend=local",
        "training.progress=none",
        f"training.epochs={EPOCHS}",
        "training.early_stopping=null",
        f"training.prometheus={{port: {port}}}",
        f"training.callbacks=[{json.dumps(callback)}]",
    ]
    command = [sys.executable, "-m", "mlp_core.cli", "train", str(ROOT / "examples" / "penguins")]
    command += ["--run-dir", str(root / "runs")]
    for setting in settings:
        command += ["--set", setting]
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    here = str(Path(__file__).resolve().parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
    log = (root / "train.log").open("w")
    return subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)


def last_scrape_of_both(api: Prometheus) -> float:
    """The latest moment when Prometheus held the run's final epoch count and a live server: the
    run's series go stale once its process has exited."""
    now = time.time()
    window = {"start": str(now - 600), "end": str(now), "step": "1"}
    query = f'max(mlp_training_epochs_total) >= {EPOCHS} and on () max(up{{job="mlp-serve"}}) == 1'
    series = api.get("/api/v1/query_range", query=query, **window)["result"]
    assert series, "Prometheus never held the run's last epoch while the server was up"
    return float(series[0]["values"][-1][0])


def resolve_variables(api: Prometheus, dashboard: dict, at: float) -> dict[str, str]:
    """Each variable's values as Grafana gets them (label_values through the label API), as the
    regex alternation Grafana substitutes for a multi-value selection."""
    values: dict[str, str] = {}
    for variable in dashboard["templating"]["list"]:
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
        assert match, variable["query"]
        selector = substitute(match.group(1), values)
        found = api.get(
            f"/api/v1/label/{match.group(2)}/values",
            **{"match[]": selector, "start": str(at - 600), "end": str(at)},
        )
        assert found, f"variable {variable['name']}: no values for {selector}"
        # Regex-escaped, then the backslashes doubled inside the PromQL string (as Grafana does).
        escaped = (re.escape(value).replace("\\", "\\\\") for value in found)
        values[variable["name"]] = "(" + "|".join(escaped) + ")"
    return values


def substitute(expr: str, values: dict[str, str]) -> str:
    expr = expr.replace("$__rate_interval", RATE_WINDOW)
    for name, value in values.items():
        expr = expr.replace(f"${name}", value)
    assert "$" not in expr, f"unresolved variable in {expr}"
    return expr


def numbers(result: list[dict]) -> list[float]:
    return [float(series["value"][1]) for series in result]


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_every_panel_expression_returns_data(stack: Stack, name: str) -> None:
    api = Prometheus(stack.prometheus)
    dashboard = dashboards()[name]
    values = resolve_variables(api, dashboard, stack.at)
    try:
        read_gpus()
        has_gpu = True
    except GpuUnavailable:
        has_gpu = False
    defined = defined_sample_names()
    empty, checked, exempt = [], 0, []
    for title, expr in targets(dashboard):
        if is_gpu_only(expr) and not has_gpu:
            assert metric_names(expr) <= defined, expr
            exempt.append(title)
            continue
        query = substitute(expr, values)
        result = api.get("/api/v1/query", query=query, time=str(stack.at))["result"]
        if not any(math.isfinite(number) for number in numbers(result)):
            empty.append(f"{title}: {query} -> {result}")
        checked += 1
    assert not empty, "panels without data:\n" + "\n".join(empty)
    assert checked >= 10
    # Only the GPU panels may be exempt, and only without a GPU.
    assert set(exempt) <= {"GPU utilisation", "GPU memory"}
    assert bool(exempt) == (not has_gpu)


def test_the_training_series_carry_the_rank(stack: Stack) -> None:
    api = Prometheus(stack.prometheus)
    query = 'mlp_training_steps_total{job="mlp-train"}'
    (series,) = api.get("/api/v1/query", query=query, time=str(stack.at))["result"]
    assert series["metric"]["rank"] == "0"
