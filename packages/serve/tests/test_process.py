"""The server as a process: startup line, SIGTERM drains requests in flight and exits 0."""

from __future__ import annotations

import asyncio
import gc
import json
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from serve_helpers import cpu_config, linear_model, slow_model, write_bundle
from serve_helpers import start_server_process as start

from mlp_core.config import ServeSection, load_config
from mlp_core.errors import ConfigError
from mlp_serve.config import load_serve_config
from mlp_serve.server import serve_async


def in_flight(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    values = re.findall(r"^mlp_inference_in_flight_requests\{[^}]*\} (\S+)$", text, re.M)
    return sum(float(v) for v in values)


def test_sigterm_finishes_requests_in_flight_then_exits_0(repo):
    write_bundle(repo, "slow", 1, slow_model(steps=200), manifest=False)
    process, url, grpc_address = start(repo)
    try:
        port = int(url.rsplit(":", 1)[1])
        assert port > 0 and int(grpc_address.rsplit(":", 1)[1]) > 0
        x = np.arange(4, dtype=np.float32).reshape(1, 4)
        body = {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": x.ravel().tolist()}
            ]
        }
        result = {}

        def slow_request() -> None:
            result["response"] = httpx.post(
                f"{url}/v2/models/slow/infer", content=json.dumps(body), timeout=60
            )

        thread = threading.Thread(target=slow_request)
        thread.start()
        deadline = time.monotonic() + 30
        while in_flight(url) < 1:
            assert time.monotonic() < deadline, "the request never started"
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        thread.join(60)
        response = result["response"]
        assert response.status_code == 200, response.text
        assert response.json()["outputs"][0]["data"] == x.ravel().tolist()
        assert process.wait(60) == 0
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/v2/health/live", timeout=2)
    finally:
        if process.poll() is None:
            process.kill()


def test_cli_refuses_a_missing_repository(tmp_path):
    process = subprocess.run(
        [sys.executable, "-m", "mlp_serve", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode != 0
    assert "is not a folder" in process.stderr


def test_serve_config_from_a_section_a_bare_file_and_overrides(tmp_path):
    sectioned = tmp_path / "config.yaml"
    sectioned.write_text(
        "model: {name: x}\nserve:\n  http_port: 9000\n  batching: {max_batch_size: 8}\n"
    )
    config = load_serve_config(sectioned, ["grpc_port=0", "serve.auth_token=abc"])
    assert (config.http_port, config.grpc_port, config.auth_token) == (9000, 0, "abc")
    assert config.batching.max_batch_size == 8
    bare = tmp_path / "serve.yaml"
    bare.write_text("models: [a, b]\npoll_seconds: null\n")
    config = load_serve_config(bare)
    assert config.models == ["a", "b"] and config.poll_seconds is None
    assert load_serve_config(None).providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    bare.write_text("batching: {max_batch: 8}\n")
    with pytest.raises(ConfigError) as info:
        load_serve_config(bare)
    assert "serve.batching.max_batch" in info.value.message
    assert str(bare) in info.value.message
    with pytest.raises(ConfigError):
        load_serve_config(tmp_path / "missing.yaml")


def test_the_serve_section_is_mlp_cores_extended_and_strict(tmp_path):
    # mlp train reads the file with mlp-core's ServeSection, which keeps mlp-serve's keys; the
    # server reads it with ServeConfig, the subclass that checks them and refuses typos.
    path = tmp_path / "config.yaml"
    path.write_text("model: {name: x}\nserve:\n  grpc_port: 0\n  batching: {max_batch_size: 8}\n")
    core = load_config(path)
    assert core.serve.grpc_port == 0 and core.serve.model_extra == {
        "batching": {"max_batch_size": 8}
    }
    served = load_serve_config(path)
    assert isinstance(served, ServeSection) and served.batching.max_batch_size == 8
    path.write_text("serve:\n  batchng: {max_batch_size: 8}\n")
    with pytest.raises(ConfigError, match="serve.batchng"):
        load_serve_config(path)


def test_a_serving_process_freezes_its_startup_objects_out_of_the_collectors_way(repo):
    # `mlp serve` (serve_async with freeze_gc) moves what startup loaded to the collector's
    # permanent generation before it says it is serving; in-process servers leave the GC alone.
    write_bundle(repo, "linear", 1, linear_model())
    frozen_when_ready: list[int] = []

    async def main(freeze: bool) -> None:
        stop = asyncio.Event()

        def ready(_ports) -> None:
            frozen_when_ready.append(gc.get_freeze_count())
            stop.set()

        await serve_async(
            repo, cpu_config(), stop=stop, on_ready=ready, handle_signals=False, freeze_gc=freeze
        )

    gc.unfreeze()
    try:
        asyncio.run(main(freeze=False))
        asyncio.run(main(freeze=True))
    finally:
        gc.unfreeze()
    assert frozen_when_ready[0] == 0
    assert frozen_when_ready[1] > 10_000  # modules, the apps, the loaded model
