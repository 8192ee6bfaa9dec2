"""Execution providers: only those that can start here are asked for, each model says which one
it got and why not CUDA, and ``serve.device: cuda`` refuses a model that would run on the CPU.

Every test asserts what this machine should give: whether CUDA can start is decided by NVML
(a GPU is there) and by loading the CUDA libraries, independently of the code under test.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import onnxruntime as ort
import pytest
from serve_helpers import (
    cuda_libraries_load,
    linear_model,
    logged_rows,
    nvml_sees_a_gpu,
    write_bundle,
)

from mlp_core.errors import ConfigError, ServingError
from mlp_serve.config import ServeConfig, load_serve_config
from mlp_serve.runtime import CPU, CUDA, load_runtime
from mlp_serve.server import BackgroundServer

GPU = nvml_sees_a_gpu()
CUDA_EXPECTED = GPU and CUDA in ort.get_available_providers() and cuda_libraries_load()


def provider_lines(path: Path) -> list[dict]:
    rows = logged_rows(path)
    return [r for r in rows if r["logger"] == "mlp_serve.runtime" and "runs on" in r["event"]]


@pytest.fixture
def model_file(repo: Path) -> Path:
    return write_bundle(repo, "linear", 1, linear_model()) / "model.onnx"


def test_the_default_gets_cuda_only_where_it_can_start(model_file: Path, log_rows: Path) -> None:
    runtime = load_runtime(model_file, ServeConfig())

    (line,) = provider_lines(log_rows)
    assert line["model"] == "linear/1" and line["provider"] == runtime.provider
    if CUDA_EXPECTED:
        assert runtime.provider == CUDA
        assert line["event"] == f"linear/1: runs on {CUDA}"
    else:
        assert runtime.provider == CPU
        assert line["event"].startswith(f"linear/1: runs on {CPU}, not {CUDA}: ")
        # Said as a fact, not as a warning: nobody asked for CUDA explicitly.
        assert line["level"] == "info"
        why = line["event"].split(": ", 2)[2]
        assert ("no NVIDIA GPU found" in why) == (not GPU), why


def test_cuda_listed_explicitly_warns_when_it_cannot_start(
    model_file: Path, log_rows: Path
) -> None:
    config = load_serve_config(None, ["providers=[CUDAExecutionProvider,CPUExecutionProvider]"])
    runtime = load_runtime(model_file, config)

    (line,) = provider_lines(log_rows)
    if CUDA_EXPECTED:
        assert (runtime.provider, line["level"]) == (CUDA, "info")
    else:
        assert (runtime.provider, line["level"]) == (CPU, "warning")


def test_device_cpu_never_asks_for_cuda(model_file: Path, log_rows: Path) -> None:
    runtime = load_runtime(model_file, ServeConfig(device="cpu"))
    assert runtime.provider == CPU
    assert runtime.session.get_providers() == [CPU]
    (line,) = provider_lines(log_rows)
    assert line["event"] == f"linear/1: runs on {CPU} (serve.device: cpu)"


def test_device_cuda_refuses_a_model_that_would_run_on_the_cpu(model_file: Path) -> None:
    config = ServeConfig(device="cuda")
    if CUDA_EXPECTED:
        assert load_runtime(model_file, config).provider == CUDA
        return
    with pytest.raises(ServingError) as caught:
        load_runtime(model_file, config)
    assert caught.value.message.startswith("serve.device is cuda, but no GPU provider can start")
    assert CUDA in caught.value.message
    assert "serve.device: auto" in (caught.value.hint or "")


def test_the_server_reports_the_refused_model_and_its_reason(repo: Path, model_file: Path) -> None:
    config = ServeConfig(http_port=0, grpc_port=0, poll_seconds=None, device="cuda")
    with BackgroundServer(repo, config) as server:
        assert server.ports is not None
        url = server.ports.http_url
        ready = httpx.get(f"{url}/v2/models/linear/ready", timeout=10)
        index = httpx.post(f"{url}/v2/repository/index", json={}, timeout=10).json()
    if CUDA_EXPECTED:
        assert ready.status_code == 200
        return
    assert ready.status_code != 200
    (entry,) = [e for e in index if e["name"] == "linear"]
    assert entry["state"] != "READY"
    assert "serve.device is cuda" in entry["reason"]


def test_an_unknown_device_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="device"):
        load_serve_config(None, ["device=gpu"])
