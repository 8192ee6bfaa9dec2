"""Deadlines: a request whose client cancels, whose gRPC deadline passes, or that outlives
serve.request_timeout_seconds is withdrawn from its model's queue and never runs.

The server-level tests hold requests in the queue with a long batching delay: the batch that
finally runs shows (rows per batch in the metrics, the batcher's withdrawn count) which requests
were in it. Distinct row counts per request make every combination tell itself apart.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from grpc_helpers import INFERENCE, GrpcServerThread
from serve_helpers import cpu_config, linear_model, wait_for, write_bundle

from mlp_obs.metrics import render
from mlp_serve._generated import mlp_inference_pb2 as pb
from mlp_serve.batching import DynamicBatcher
from mlp_serve.config import BatchingConfig
from mlp_serve.errors import Cancelled, DeadlineExceeded
from mlp_serve.server import BackgroundServer

DELAY_MS = 2000.0  # the first request's batch waits this long for company


def infer_body(rows: int) -> bytes:
    request = pb.ModelInferRequest(model_name="linear")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[rows, 4])
    tensor.contents.fp32_contents.extend([1.0] * (4 * rows))
    return request.SerializeToString()


def rest_body(rows: int) -> dict:
    return {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 4], "data": [1] * 4 * rows}]
    }


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a family's samples whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        named = line.startswith(name + "{") or line.startswith(name + " ")
        if named and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture
def delayed(repo: Path):
    write_bundle(repo, "linear", 1, linear_model())
    config = cpu_config(batching={"max_queue_delay_ms": DELAY_MS})
    with GrpcServerThread(repo, config) as server:
        yield server


def test_grpc_calls_past_their_deadline_or_cancelled_leave_the_queue_unrun(delayed):
    infer = grpc.insecure_channel(delayed.address).unary_unary(INFERENCE + "ModelInfer")
    first = infer.future(infer_body(1))  # leads: waits DELAY_MS for company
    time.sleep(0.2)
    company = infer.future(infer_body(2))  # stays: runs with the first
    with pytest.raises(grpc.RpcError) as late:
        infer(infer_body(3), timeout=0.3)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    cancelled = infer.future(infer_body(5))
    time.sleep(0.2)
    assert cancelled.cancel()
    for answered, rows in ((first, 1), (company, 2)):
        response = pb.ModelInferResponse.FromString(answered.result(timeout=30))
        assert list(response.outputs[0].shape) == [rows, 3]
    assert delayed.dataplane is not None
    entry = delayed.dataplane.repository.get("linear")
    assert isinstance(entry.runner, DynamicBatcher)
    wait_for(lambda: entry.runner.withdrawn == 2)
    text = render(delayed.dataplane.registry)[0].decode()
    # One batch of the 1 + 2 rows that stayed: the 3 and the 5 never ran.
    assert metric(text, "mlp_inference_batch_size_count", model="linear") == 1
    assert metric(text, "mlp_inference_batch_size_sum", model="linear") == 3
    left = metric(text, "mlp_inference_requests_total", status="timeout") + metric(
        text, "mlp_inference_requests_total", status="cancelled"
    )
    assert left == 2


def test_the_server_timeout_gives_rest_504_and_grpc_deadline_exceeded_and_withdraws(repo: Path):
    write_bundle(repo, "linear", 1, linear_model())
    config = cpu_config(request_timeout_seconds=0.4, batching={"max_queue_delay_ms": DELAY_MS})
    with BackgroundServer(repo, config) as server, httpx.Client(base_url=server.http_url) as http:
        assert server.ports is not None
        statuses: dict[int, int] = {}

        def post(rows: int) -> None:
            response = http.post("/v2/models/linear/infer", json=rest_body(rows))
            statuses[rows] = response.status_code
            if rows == 3:
                assert "request_timeout_seconds" in response.json()["error"]

        first = threading.Thread(target=post, args=(1,))  # in the batch: it runs, answered late
        first.start()
        time.sleep(0.1)
        queued = threading.Thread(target=post, args=(3,))  # queued: withdrawn at its timeout
        queued.start()
        channel = grpc.insecure_channel(server.ports.grpc_address)
        with channel, pytest.raises(grpc.RpcError) as late:
            # No client deadline: the server's own timeout ends it.
            channel.unary_unary(INFERENCE + "ModelInfer")(infer_body(5), timeout=30)
        error = late.value
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
        assert "time ran out" in error.details()  # type: ignore[attr-defined]
        first.join(30)
        queued.join(30)
        assert statuses == {1: 504, 3: 504}

        def metrics() -> str:
            return http.get("/metrics").text

        wait_for(lambda: metric(metrics(), "mlp_inference_batch_size_count", model="linear") >= 1)
        time.sleep(0.2)  # a second batch, if any, would start at once
        text = metrics()
        assert metric(text, "mlp_inference_batch_size_count", model="linear") == 1
        assert metric(text, "mlp_inference_batch_size_sum", model="linear") == 1
        assert metric(text, "mlp_inference_requests_total", protocol="rest", status="timeout") == 2
        assert metric(text, "mlp_inference_requests_total", protocol="grpc", status="timeout") == 1


# -- the batcher's hand-over of the lead when waiting callers leave ----------------------------


class Gate:
    """A run function that holds its first batch until opened, and records every batch."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.running = threading.Event()
        self.batches: list[list[float]] = []

    def run(self, feeds, outputs):
        x = feeds["x"]
        self.running.set()
        if not self.batches:
            self.open.wait(30)
        self.batches.append(sorted(set(x[:, 0].tolist())))
        return {"y": x * 2}


def test_waiting_callers_that_time_out_or_end_leave_and_the_lead_still_passes_on():
    gate = Gate()
    ended: list = []
    with ThreadPoolExecutor(4) as executor:
        batcher = DynamicBatcher(
            gate.run, executor, BatchingConfig(max_queue_delay_ms=0), lambda *a: None
        )

        def call(value: float, **kwargs):
            return batcher.run_in_thread({"x": np.full((1, 2), value, np.float32)}, ["y"], **kwargs)

        with ThreadPoolExecutor(4) as callers:
            leader = callers.submit(call, 1.0)
            assert gate.running.wait(10)
            timed_out = callers.submit(call, 2.0, timeout=0.2)
            stays = callers.submit(call, 3.0)
            gone = callers.submit(call, 4.0, on_end=lambda fn: ended.append(fn) or True)
            with pytest.raises(DeadlineExceeded):
                timed_out.result(10)
            wait_for(lambda: len(ended) == 1 and batcher.queued == 2)
            ended[0]()  # grpc: the call ended (cancelled)
            with pytest.raises(Cancelled):
                gone.result(10)
            gate.open.set()
            assert leader.result(10)["y"][0, 0] == 2.0
            assert stays.result(10)["y"][0, 0] == 6.0  # promoted to lead, ran its own batch
    assert gate.batches == [[1.0], [3.0]]
    assert batcher.withdrawn == 2 and batcher.queued == 0


def test_a_call_that_ended_before_it_waited_is_withdrawn_at_once():
    gate = Gate()
    with ThreadPoolExecutor(2) as executor, ThreadPoolExecutor(1) as callers:
        batcher = DynamicBatcher(gate.run, executor, BatchingConfig(), lambda *a: None)
        leader = callers.submit(batcher.run_in_thread, {"x": np.ones((1, 2), np.float32)}, ["y"])
        assert gate.running.wait(10)
        with pytest.raises(Cancelled):
            batcher.run_in_thread(
                {"x": np.full((1, 2), 7.0, np.float32)}, ["y"], on_end=lambda f: False
            )
        gate.open.set()
        assert leader.result(10)["y"][0, 0] == 2.0
    assert gate.batches == [[1.0]] and batcher.queued == 0 and batcher.withdrawn == 1


def test_no_deadline_means_none_from_grpc():
    from mlp_serve.deadlines import grpc_timeout

    class Context:
        def __init__(self, remaining: float) -> None:
            self.remaining = remaining

        def time_remaining(self) -> float:
            return self.remaining

    assert grpc_timeout(Context(1e9), cpu_config()) is None  # type: ignore[arg-type]
    assert grpc_timeout(Context(2.0), cpu_config()) == 2.0  # type: ignore[arg-type]
    limited = cpu_config(request_timeout_seconds=0.5)
    assert grpc_timeout(Context(2.0), limited) == 0.5  # type: ignore[arg-type]
    assert grpc_timeout(Context(1e9), limited) == 0.5  # type: ignore[arg-type]
