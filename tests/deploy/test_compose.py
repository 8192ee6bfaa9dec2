"""compose.yaml, checked without a Docker engine: the compose-spec schema, the services and their
wiring, secrets only from files, every mounted file present, and the command lines read by the
programs that will run them (``mlp serve``'s and ``mlp train``'s own parsers, and a real
``mlflow server`` started with the mlflow service's arguments).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COMPOSE = ROOT / "compose.yaml"
SERVICES = {"api", "api-gpu", "prometheus", "grafana", "mlflow", "train", "train-gpu"}
SECRET_WORDS = re.compile(r"token|password|secret|passwd|api[_-]?key|credential", re.IGNORECASE)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # merges the x-api and x-train anchors


def tool(name: str) -> str:
    path = BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is not installed: `uv sync --all-packages` installs the dev tools"
    return found


def test_compose_yaml_is_valid_compose_spec():
    result = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok -- validation done" in result.stdout


def test_the_services_and_their_profiles(compose):
    services = compose["services"]
    assert set(services) == SERVICES
    # Plain `docker compose up` starts the stack; the GPU and training ones only when asked.
    profiles = {name: service.get("profiles") for name, service in services.items()}
    assert profiles == {
        "api": None,
        "prometheus": None,
        "grafana": None,
        "mlflow": None,
        "api-gpu": ["gpu"],
        "train": ["train"],
        "train-gpu": ["train-gpu"],
    }
    ports = {name: service.get("ports", []) for name, service in services.items()}
    assert ports["api"] == ports["api-gpu"] == ["8000:8000", "8001:8001"]
    assert ports["prometheus"] == ["9090:9090"]
    assert ports["grafana"] == ["3000:3000"]
    assert ports["mlflow"] == ["5000:5000"]


def test_the_builds_name_existing_dockerfiles(compose):
    expected = {
        "api": "deploy/docker/serve.Dockerfile",
        "api-gpu": "deploy/docker/serve-cuda.Dockerfile",
        "train": "deploy/docker/train.Dockerfile",
        "train-gpu": "deploy/docker/train.Dockerfile",
    }
    for name, dockerfile in expected.items():
        build = compose["services"][name]["build"]
        assert build == {"context": ".", "dockerfile": dockerfile}, (name, build)
        assert (ROOT / dockerfile).is_file()


@pytest.mark.parametrize("name", ["api-gpu", "train-gpu"])
def test_the_gpu_variants_reserve_nvidia_gpus_and_stand_in_for_the_cpu_ones(compose, name):
    service = compose["services"][name]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    # Prometheus scrapes `api` and `train`: the GPU variant answers to that name.
    stands_in_for = name.removesuffix("-gpu")
    assert service["networks"]["default"]["aliases"] == [stands_in_for]
    cpu = compose["services"][stands_in_for]
    assert "deploy" not in cpu
    same = {k: v for k, v in service.items() if k not in {"build", "image", "profiles"}}
    same.pop("deploy")
    same.pop("networks")
    assert same == {k: v for k, v in cpu.items() if k not in {"build", "image", "profiles"}}


def test_the_api_command_is_what_mlp_serve_accepts(compose):
    from mlp_serve.cli.serve import build_parser

    api = compose["services"]["api"]
    args = build_parser().parse_args(api["command"])  # after the image's `mlp serve` entrypoint
    assert (args.repository, args.host, args.http_port, args.grpc_port) == (
        "/models",
        "0.0.0.0",
        8000,
        8001,
    )
    assert args.config == "/run/secrets/serve_auth" and api["secrets"] == ["serve_auth"]
    assert api["volumes"] == ["models:/models:ro"]
    # SIGTERM drains for --drain-seconds; the grace before SIGKILL is longer.
    assert api["stop_signal"] == "SIGTERM"
    grace = int(re.fullmatch(r"(\d+)s", api["stop_grace_period"]).group(1))
    assert grace > args.drain_seconds + 5, (grace, args.drain_seconds)


def test_the_train_job_logs_to_mlflow_exposes_metrics_and_exports_to_the_api(compose):
    from mlp_core.config import load_config
    from mlp_train.config import TrainConfig

    train = compose["services"]["train"]
    assert train["entrypoint"] == ["mlp-train-and-export"]
    config, repository, name, *options = train["command"]
    assert (repository, name) == ("/models", "penguins")
    assert train["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert train["depends_on"] == {"mlflow": {"condition": "service_healthy"}}
    # The api reads the volume train writes.
    assert "models:/models" in train["volumes"]
    assert "models:/models:ro" in compose["services"]["api"]["volumes"]
    # The config path is under the working dir, where ./examples is mounted.
    assert train["working_dir"] == "/workspace"
    assert "./examples:/workspace/examples:ro" in train["volumes"]
    assert (ROOT / config).is_dir()
    # The `mlp train` options, as mlp train validates them (the data path is relative to the
    # working dir, as the mount makes it there).
    overrides = [options[i + 1] for i, word in enumerate(options) if word == "--set"]
    assert options[options.index("--run-dir") + 1] == "/runs"
    loaded = load_config(ROOT / config, overrides, schema=TrainConfig)
    assert loaded.training.prometheus is not None
    assert (loaded.training.prometheus.port, loaded.training.prometheus.address) == (
        9400,
        "0.0.0.0",
    )
    assert train["expose"] == ["9400"]


def test_prometheus_scrapes_what_compose_runs(compose):
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = {
        target
        for job in prometheus["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    assert {"api:8000", "train:9400"} <= targets, targets
    mounted = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/rules:/etc/prometheus/rules:ro" in mounted
    assert all(rule.startswith("/etc/prometheus/rules/") for rule in prometheus["rule_files"])


def test_grafana_reads_the_dashboards_where_compose_mounts_them(compose):
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/mlp.yml").read_text())
    paths = {p["options"]["path"] for p in provider["providers"]}
    targets = {v.split(":")[1] for v in compose["services"]["grafana"]["volumes"]}
    assert paths <= targets, (paths, targets)
    datasource = (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    assert "http://prometheus:9090" in datasource


def test_every_bind_mounted_file_exists(compose):
    sources = [
        volume.split(":")[0]
        for service in compose["services"].values()
        for volume in service.get("volumes", [])
        if volume.startswith("./")
    ]
    assert len(sources) >= 5, sources  # prometheus.yml, rules, provisioning, dashboards, examples
    assert [s for s in sources if not (ROOT / s).exists()] == []
    named = {
        volume.split(":")[0]
        for service in compose["services"].values()
        for volume in service.get("volumes", [])
        if not volume.startswith("./")
    }
    assert named == set(compose["volumes"])
    assert {"models", "mlflow-db", "mlflow-artifacts"} <= named


def test_no_secret_is_written_inline(compose):
    for name, service in compose["services"].items():
        environment = service.get("environment", {})
        assert isinstance(environment, dict), name  # KEY: value, so the check sees every key
        for key, value in environment.items():
            if SECRET_WORDS.search(key):
                # Only a pointer to a mounted secret file, never the value.
                assert key.endswith("__FILE") and str(value).startswith("/run/secrets/"), key
        words = [*service.get("command", []), *service.get("entrypoint", [])]
        assert not [w for w in words if SECRET_WORDS.search(w) and "/run/secrets/" not in w], name
    # Every secret is a git-ignored file beside a committed example.
    for name, secret in compose["secrets"].items():
        assert set(secret) == {"file"}, (name, secret)
        path = ROOT / secret["file"]
        assert path.parent == ROOT / "deploy/compose/secrets", path
        assert path.with_name(path.name + ".example").is_file(), path
        ignored = subprocess.run(
            ["git", "check-ignore", "--quiet", "--no-index", str(path)], cwd=ROOT, check=False
        )
        assert ignored.returncode == 0, f"{path} would be committed"
    grafana = compose["services"]["grafana"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == (
        "/run/secrets/grafana_admin_password"
    )
    assert grafana["secrets"] == ["grafana_admin_password"]


def test_the_serve_auth_example_is_a_serve_config_with_tokens():
    from mlp_serve.config import load_serve_config

    config = load_serve_config(ROOT / "deploy/compose/secrets/serve-auth.yaml.example")
    assert config.auth_token and config.admin_token
    assert config.auth_token != config.admin_token


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_mlflow_service_command_serves_the_service_name(compose, tmp_path):
    """`mlflow server` with the service's own arguments (paths into tmp_path, loopback, a free
    port): it starts, creates an experiment in the SQLite store, and accepts the Host header
    `mlflow:5000` that the train job sends while refusing an unknown one."""
    mlflow = compose["services"]["mlflow"]
    command = list(mlflow["command"])
    assert command[:2] == ["mlflow", "server"]
    port = free_port()
    replaced = {
        "--host": "127.0.0.1",
        "--port": str(port),
        "--backend-store-uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--artifacts-destination": str(tmp_path / "artifacts"),
    }
    for option, value in replaced.items():
        command[command.index(option) + 1] = value
    assert "sqlite:////mlflow/db/mlflow.db" in mlflow["command"]
    assert "mlflow-db:/mlflow/db" in mlflow["volumes"]
    assert "mlflow-artifacts:/mlflow/artifacts" in mlflow["volumes"]
    with (tmp_path / "mlflow.log").open("w") as log:  # the child keeps its own descriptor
        server = subprocess.Popen(
            [tool("mlflow"), *command[1:]],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "mlflow.log").read_text()
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "mlflow.log").read_text()
                time.sleep(0.5)

        def create(host: str) -> int:
            request = urllib.request.Request(
                f"{base}/api/2.0/mlflow/experiments/create",
                data=b'{"name": "compose-check-%s"}' % host.split(":")[0].encode(),
                headers={"Content-Type": "application/json", "Host": host},
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as reply:
                    return reply.status
            except urllib.error.HTTPError as refused:
                return refused.code

        assert create("mlflow:5000") == 200
        assert create("attacker.example:5000") == 403
    finally:
        # mlflow server runs its workers in children: end the whole group it leads.
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
