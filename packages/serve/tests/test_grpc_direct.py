"""gRPC inference without dynamic batching, answered in grpc's call threads (no event-loop hop).

Real servers and real clients: a GrpcServerThread (see grpc_helpers) with batching off, and for
the drain on SIGTERM the server as a process.
"""

from __future__ import annotations

import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton_grpc
from grpc_helpers import GrpcServerThread, raw_call
from serve_helpers import B, W, linear_model, slow_model, write_bundle
from test_grpc_server import _config, gather_model
from test_process import in_flight, start
from tritonclient.utils import InferenceServerException

from mlp_serve._generated import mlp_inference_pb2 as pb
from mlp_serve.config import BatchingConfig

TOKEN = "direct-t0ken"
NO_BATCHING = BatchingConfig(enabled=False)


def _input(name: str, array: np.ndarray, datatype: str = "FP32") -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _sample(running: GrpcServerThread, name: str, **labels: str) -> float:
    assert running.dataplane is not None and running.dataplane.registry is not None
    return running.dataplane.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    write_bundle(repo, "linear", 1, linear_model(), class_labels=["a", "b", "c"])
    write_bundle(repo, "gather", 1, gather_model(), manifest=False)
    with GrpcServerThread(repo, _config(batching=NO_BATCHING)) as server:
        yield server


@pytest.fixture(scope="module")
def client(running):
    with triton_grpc.InferenceServerClient(running.address) as triton_client:
        yield triton_client


def test_sixteen_concurrent_clients_get_what_onnxruntime_computes(running):
    session = ort.InferenceSession(
        linear_model().SerializeToString(), providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(1 + i % 5, W.shape[0])).astype(np.float32) for i in range(160)]
    before = _sample(
        running, "mlp_inference_queue_duration_seconds_count", model="linear", version="1"
    )

    def call(x: np.ndarray) -> np.ndarray:
        # A client (and channel) per call: 16 connections at once, as 16 clients would open.
        with triton_grpc.InferenceServerClient(running.address) as own:
            return own.infer("linear", [_input("x", x)]).as_numpy("y")

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, batches))
    for x, y in zip(batches, results):
        np.testing.assert_allclose(y, session.run(["y"], {"x": x})[0], rtol=1e-6, atol=1e-6)

    # Each request ran on its own, at once in its call thread: it never queued for the loop.
    count = _sample(
        running, "mlp_inference_queue_duration_seconds_count", model="linear", version="1"
    )
    assert count - before == len(batches)
    assert (
        _sample(running, "mlp_inference_queue_duration_seconds_sum", model="linear", version="1")
        == 0.0
    )
    ok = _sample(
        running,
        "mlp_inference_requests_total",
        model="linear",
        version="1",
        protocol="grpc",
        status="ok",
    )
    assert ok >= len(batches)
    assert (
        _sample(
            running,
            "mlp_inference_in_flight_requests",
            model="linear",
            version="1",
            protocol="grpc",
        )
        == 0
    )
    assert running.dataplane is not None and running.dataplane.in_flight == 0


def test_errors_keep_their_codes_and_are_counted(running, client):
    def status(call) -> tuple[str, str]:
        with pytest.raises(InferenceServerException) as caught:
            call()
        return caught.value.status(), caught.value.message()

    before = _sample(
        running,
        "mlp_inference_requests_total",
        model="linear",
        version="1",
        protocol="grpc",
        status="invalid_input",
    )
    code, message = status(
        lambda: client.infer("linear", [_input("x", np.ones((1, 7), np.float32))])
    )
    assert code == "StatusCode.INVALID_ARGUMENT" and "axis 1 must be 4" in message
    code, message = status(
        lambda: client.infer(
            "linear",
            [_input("x", np.ones((1, 4), np.float32))],
            outputs=[triton_grpc.InferRequestedOutput("nope")],
        )
    )
    assert code == "StatusCode.INVALID_ARGUMENT" and "unknown output" in message
    after = _sample(
        running,
        "mlp_inference_requests_total",
        model="linear",
        version="1",
        protocol="grpc",
        status="invalid_input",
    )
    assert after - before == 2

    # onnxruntime failing in the call thread (an index out of range) is INTERNAL, counted.
    indices = np.array([1, 99], np.int64)
    code, message = status(lambda: client.infer("gather", [_input("i", indices, "INT64")]))
    assert code == "StatusCode.INTERNAL" and "failed to run" in message
    assert (
        _sample(
            running,
            "mlp_inference_requests_total",
            model="gather",
            version="1",
            protocol="grpc",
            status="error",
        )
        == 1
    )
    good = client.infer("gather", [_input("i", np.array([1, 4], np.int64), "INT64")])
    assert good.as_numpy("v").tolist() == [20, 50]

    # Names the snapshot lacks go to the loop, which says why.
    code, _ = status(lambda: client.infer("nope", [_input("x", np.ones((1, 4), np.float32))]))
    assert code == "StatusCode.NOT_FOUND"
    code, message = status(
        lambda: client.infer("linear", [_input("x", np.ones((1, 4), np.float32))], "7")
    )
    assert code == "StatusCode.NOT_FOUND" and "no ready version" in message


def test_new_versions_and_unloads_reach_the_call_threads(tmp_path):
    write_bundle(tmp_path, "linear", 1, linear_model())
    x = np.ones((2, 4), np.float32)
    with (
        GrpcServerThread(tmp_path, _config(batching=NO_BATCHING)) as running,
        triton_grpc.InferenceServerClient(running.address) as client,
    ):
        assert running.dataplane is not None
        first = client.infer("linear", [_input("x", x)])
        assert first.get_response().model_version == "1"
        write_bundle(tmp_path, "linear", 2, linear_model(b=np.full(3, 5.0, np.float32)))
        running.call(running.dataplane.repository.sync())
        second = client.infer("linear", [_input("x", x)])
        assert second.get_response().model_version == "2"
        np.testing.assert_allclose(second.as_numpy("y"), first.as_numpy("y") + 5.0 - B)
        # Version 1 still answers when asked for by number.
        asked = client.infer("linear", [_input("x", x)], model_version="1")
        np.testing.assert_allclose(asked.as_numpy("y"), first.as_numpy("y"))

        shutil.rmtree(tmp_path / "linear" / "2")
        running.call(running.dataplane.repository.sync())
        assert client.infer("linear", [_input("x", x)]).get_response().model_version == "1"

        running.call(running.dataplane.unload_model("linear"))
        with pytest.raises(InferenceServerException) as caught:
            client.infer("linear", [_input("x", x)])
        assert caught.value.status() == "StatusCode.UNAVAILABLE"


def test_the_token_is_still_required(tmp_path):
    write_bundle(tmp_path, "linear", 1, linear_model())
    request = pb.ModelInferRequest(model_name="linear")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    body = request.SerializeToString()
    config = _config(batching=NO_BATCHING, auth_token=TOKEN)
    with (
        GrpcServerThread(tmp_path, config) as running,
        grpc.insecure_channel(running.address) as channel,
    ):
        with pytest.raises(grpc.RpcError) as caught:
            raw_call(channel, "ModelInfer", body)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answer = pb.ModelInferResponse.FromString(
            raw_call(channel, "ModelInfer", body, (("authorization", f"Bearer {TOKEN}"),))
        )
        assert answer.model_name == "linear" and len(answer.raw_output_contents) == 1


def test_sigterm_waits_for_a_slow_grpc_call_in_its_thread(repo):
    # About a second of onnxruntime in one call thread (200 steps can end before a poll sees it).
    write_bundle(repo, "slow", 1, slow_model(steps=2000), manifest=False)
    process, url, grpc_address = start(repo, "--set", "batching.enabled=false")
    try:
        x = np.arange(4, dtype=np.float32).reshape(1, 4)
        result: dict[str, object] = {}

        def slow_call() -> None:
            with triton_grpc.InferenceServerClient(grpc_address) as own:
                try:
                    result["y"] = own.infer("slow", [_input("x", x)]).as_numpy("y")
                except InferenceServerException as exc:
                    result["error"] = exc

        thread = threading.Thread(target=slow_call)
        thread.start()
        deadline = time.monotonic() + 30
        while in_flight(url) < 1:
            assert time.monotonic() < deadline, "the call never started"
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        thread.join(60)
        assert "error" not in result, result.get("error")
        np.testing.assert_allclose(result["y"], x)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_the_core_stop_waits_for_a_call_running_in_its_thread(tmp_path):
    write_bundle(tmp_path, "slow", 1, slow_model(steps=2000), manifest=False)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    with (
        GrpcServerThread(tmp_path, _config(batching=NO_BATCHING)) as running,
        triton_grpc.InferenceServerClient(running.address) as client,
    ):
        dataplane = running.dataplane
        assert dataplane is not None
        result: dict[str, object] = {}
        thread = threading.Thread(
            target=lambda: result.update(y=client.infer("slow", [_input("x", x)]).as_numpy("y"))
        )
        thread.start()
        deadline = time.monotonic() + 30
        while dataplane.in_flight < 1:
            assert time.monotonic() < deadline, "the call never started"
            time.sleep(0.005)
        running.call(dataplane.stop(drain_seconds=60))
        # The request is counted before it leaves the in-flight count: stop() waited for it.
        labels = {"model": "slow", "version": "1", "protocol": "grpc", "status": "ok"}
        assert _sample(running, "mlp_inference_requests_total", **labels) == 1
        assert dataplane.in_flight == 0
        thread.join(60)
        np.testing.assert_allclose(result["y"], x)
