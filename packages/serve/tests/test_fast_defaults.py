"""The defaults are the fast ones: no access line per request unless asked (the real process's
output), a quick model's REST requests run on the loop (correct beside concurrent gRPC ones),
the plain-ASGI inference route answers as FastAPI's did, and orjson keeps json's NaN."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from grpc_helpers import linear_infer
from serve_helpers import STARTUP, B, W, cpu_config, linear_model, slow_model, write_bundle

from mlp_serve.config import BatchingConfig
from mlp_serve.dataplane import DataPlane
from mlp_serve.inline import INLINE_MAX_REQUEST_SECONDS, runs_inline
from mlp_serve.rest.app import create_app
from mlp_serve.rest.codec import decode_request, dump_json
from mlp_serve.runtime import load_runtime
from mlp_serve.server import BackgroundServer

ROWS = np.arange(8, dtype=np.float32).reshape(2, 4)


def infer_body(rows: np.ndarray) -> dict:
    return {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": list(rows.shape), "data": rows.tolist()}
        ]
    }


# -- the access log, as the real process writes it -------------------------------------------


def serve_and_capture(repo: Path, tmp_path: Path, *extra: str) -> str:
    """``python -m mlp_serve`` at the default log level: 3 inferences and a health check, then
    SIGTERM; what it wrote to stderr."""
    env = {k: v for k, v in os.environ.items() if k != "MLP_LOG_LEVEL"}
    stderr_path = tmp_path / "stderr.txt"
    command = [sys.executable, "-m", "mlp_serve", str(repo), "--http-port", "0"]
    command += ["--grpc-port", "0", "--set", "poll_seconds=null"]
    command += ["--set", "providers=[CPUExecutionProvider]", *extra]
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env
        )
        watchdog = threading.Timer(120, process.kill)
        watchdog.start()
        try:
            assert process.stdout is not None
            url = next(m[1] for line in process.stdout if (m := STARTUP.search(line)))
            with httpx.Client(base_url=url, timeout=30) as client:
                for _ in range(3):
                    response = client.post("/v2/models/linear/infer", json=infer_body(ROWS))
                    assert response.status_code == 200
                assert client.get("/v2/health/ready").status_code == 200
            process.send_signal(signal.SIGTERM)
            assert process.wait(60) == 0
        finally:
            watchdog.cancel()
            if process.poll() is None:
                process.kill()
                process.wait()
    return stderr_path.read_text()


def access_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "path=/v2/" in line]


def test_no_access_line_per_request_by_default(repo: Path, tmp_path: Path) -> None:
    write_bundle(repo, "linear", 1, linear_model())
    output = serve_and_capture(repo, tmp_path)
    # The process logs at INFO (its startup lines, the thread choice), just not per request.
    assert "linear/1: onnxruntime 1 intra-op thread (auto:" in output
    assert access_lines(output) == []


def test_access_log_when_configured(repo: Path, tmp_path: Path) -> None:
    write_bundle(repo, "linear", 1, linear_model())
    output = serve_and_capture(repo, tmp_path, "--set", "access_log=true")
    lines = access_lines(output)
    assert len([line for line in lines if "path=/v2/models/linear/infer" in line]) == 3
    assert all("status=200" in line and "request_id=" in line for line in lines)
    assert any("path=/v2/health/ready" in line for line in lines)


# -- quick models on the loop -----------------------------------------------------------------


def test_only_quick_models_and_small_requests_without_a_queue_delay_run_inline(
    repo: Path,
) -> None:
    quick = load_runtime(
        write_bundle(repo, "linear", 1, linear_model()) / "model.onnx", cpu_config()
    )
    slow = load_runtime(write_bundle(repo, "slow", 1, slow_model()) / "model.onnx", cpu_config())
    one = {"x": np.zeros((1, 4), dtype=np.float32)}
    batching = BatchingConfig()
    assert not runs_inline(quick, batching, one)  # not warmed up: not known to be quick
    quick.warmup()
    slow.warmup()
    assert quick.run_seconds is not None and slow.run_seconds is not None
    assert runs_inline(quick, batching, one)
    assert runs_inline(quick, BatchingConfig(enabled=False), one)
    assert not runs_inline(quick, BatchingConfig(max_queue_delay_ms=1.0), one)  # it would wait
    assert not runs_inline(slow, batching, one)
    # Rows x the warm-up run past the bound: the pool, so the loop never stalls behind it.
    many = int(INLINE_MAX_REQUEST_SECONDS / quick.run_seconds) + 1
    assert not runs_inline(quick, batching, {"x": np.zeros((many, 4), dtype=np.float32)})


@pytest.mark.parametrize("batching", [True, False], ids=["batching", "no-batching"])
def test_concurrent_rest_and_grpc_to_a_quick_model_all_right(repo: Path, batching: bool) -> None:
    write_bundle(repo, "linear", 1, linear_model())
    config = cpu_config(batching=BatchingConfig(enabled=batching))
    rng = np.random.default_rng(3)
    with BackgroundServer(repo, config) as server:
        assert server.ports is not None
        channel = grpc.insecure_channel(server.ports.grpc_address)
        client = httpx.Client(base_url=server.http_url, timeout=30)

        def rest(rows: np.ndarray) -> np.ndarray:
            response = client.post("/v2/models/linear/infer", json=infer_body(rows))
            assert response.status_code == 200, response.text
            return np.asarray(response.json()["outputs"][0]["data"]).reshape(-1, 3)

        requests = [
            (rest if i % 2 else lambda r: linear_infer(channel, r), rng.normal(size=(1 + i % 3, 4)))
            for i in range(120)
        ]
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda job: job[0](job[1].astype(np.float32)), requests))
        client.close()
        channel.close()
    for (_, rows), answer in zip(requests, answers):
        np.testing.assert_allclose(answer, rows.astype(np.float32) @ W + B, rtol=1e-5, atol=1e-5)


# -- the plain-ASGI inference route -----------------------------------------------------------


def test_the_inference_route_answers_as_the_protocol_says(repo: Path) -> None:
    write_bundle(repo, "linear", 1, linear_model())
    with (
        BackgroundServer(repo, cpu_config()) as server,
        httpx.Client(base_url=server.http_url, timeout=30) as client,
    ):
        versioned = client.post("/v2/models/linear/versions/1/infer", json=infer_body(ROWS))
        assert versioned.status_code == 200
        assert versioned.json()["model_version"] == "1"
        assert versioned.headers["content-type"] == "application/json"
        assert int(versioned.headers["content-length"]) == len(versioned.content)
        assert versioned.headers["x-request-id"]  # the middleware still wraps it
        missing = client.post("/v2/models/nope/infer", json=infer_body(ROWS))
        assert missing.status_code == 404 and "nope" in missing.json()["error"]
        broken = client.post("/v2/models/linear/infer", content=b"{not json")
        assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]
        # Other methods reach FastAPI's route, which says what the path takes.
        assert client.get("/v2/models/linear/infer").status_code == 405
        # FastAPI's route stays in the OpenAPI document.
        paths = client.get("/openapi.json").json()["paths"]
        assert "post" in paths["/v2/models/{model}/infer"]


class Stamp:
    """A user's own middleware: stamps every response, and fails a request that asks it to."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if (b"x-explode", b"1") in scope.get("headers", []):
            raise RuntimeError("the middleware broke")

        async def stamped(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"x-stamp", b"yes")]
            await send(message)

        await self.app(scope, receive, stamped)


def test_middleware_added_to_the_app_wraps_the_inference_route_too(repo: Path) -> None:
    # The inference route is answered ahead of FastAPI's own layers, but inside the app's
    # middleware, in the same order, and inside the same last-resort 500 answer.
    write_bundle(repo, "linear", 1, linear_model())

    async def scenario() -> list[httpx.Response]:
        config = cpu_config()
        plane = DataPlane(repo, config)
        await plane.start()
        try:
            app = create_app(plane, config)
            app.add_middleware(Stamp)
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                body = infer_body(ROWS)
                answers = [
                    await client.post("/v2/models/linear/infer", json=body),
                    await client.get("/v2/health/live"),
                    await client.post(
                        "/v2/models/linear/infer", json=body, headers={"x-explode": "1"}
                    ),
                    await client.post(
                        "/v2/models/linear/infer", json=body, headers={"x-request-id": "abc-123"}
                    ),
                    await client.post(
                        "/v2/models/linear/infer", json=body, headers={"x-request-id": "no way!"}
                    ),
                ]
            # Started: a middleware added now would reach neither stack, so it is refused.
            with pytest.raises(RuntimeError, match="after an application has started"):
                app.add_middleware(Stamp)
            return answers
        finally:
            await plane.stop(1)

    answered, health, exploded, given_id, bad_id = asyncio.run(scenario())
    assert answered.status_code == 200
    assert answered.json()["outputs"][0]["data"] == pytest.approx((ROWS @ W + B).ravel().tolist())
    assert answered.headers["x-stamp"] == "yes" and answered.headers["x-request-id"]
    assert health.headers["x-stamp"] == "yes"  # FastAPI's routes, as before
    assert exploded.status_code == 500
    assert exploded.json() == {"error": "internal error: RuntimeError"}
    assert given_id.headers["x-request-id"] == "abc-123"  # the client's id, echoed
    assert bad_id.status_code == 200 and bad_id.headers["x-request-id"] != "no way!"
    assert len(bad_id.headers["x-request-id"]) == 32  # replaced by one of ours


def test_nan_in_and_out_as_the_standard_library_writes_it(repo: Path) -> None:
    # orjson refuses NaN literals and writes NaN as null; the codec falls back to json for both.
    body = (
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [NaN, 1, 2, 3]}]}'
    )
    request = decode_request(body, None)
    assert math.isnan(float(request.inputs[0].data[0]))
    assert (
        dump_json({"data": [float("nan"), 1.5], "none": None}) == b'{"data":[NaN,1.5],"none":null}'
    )
    assert dump_json({"data": [0.25], "none": None}) == b'{"data":[0.25],"none":null}'
    write_bundle(repo, "linear", 1, linear_model())
    with BackgroundServer(repo, cpu_config()) as server:
        response = httpx.post(f"{server.http_url}/v2/models/linear/infer", content=body, timeout=30)
    assert response.status_code == 200
    assert b"NaN" in response.content
    assert all(math.isnan(v) for v in json.loads(response.content)["outputs"][0]["data"])
