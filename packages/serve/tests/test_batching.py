"""Dynamic batching through the real server: merging, splitting, a bounded queue, switched off."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from prometheus_client.parser import text_string_to_metric_families
from serve_helpers import B, W, cpu_config, linear_model, slow_model, write_bundle

from mlp_serve.config import BatchingConfig
from mlp_serve.runtime import ModelRuntime
from mlp_serve.server import BackgroundServer


def post(url: str, model: str, x: np.ndarray) -> httpx.Response:
    body = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
        ]
    }
    return httpx.post(f"{url}/v2/models/{model}/infer", content=json.dumps(body), timeout=60)


def output(response: httpx.Response) -> np.ndarray:
    tensor = response.json()["outputs"][0]
    return np.asarray(tensor["data"], np.float32).reshape(tensor["shape"])


def batch_sizes(url: str, model: str) -> tuple[float, float]:
    """(executions, rows) the server recorded for ``model``."""
    count = total = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            if sample.name == "mlp_inference_batch_size_count":
                count += sample.value
            elif sample.name == "mlp_inference_batch_size_sum":
                total += sample.value
    return count, total


@pytest.mark.parametrize("delay_ms", [0.0, 5.0])  # 0, the default: only what queued meanwhile
def test_concurrent_requests_are_merged_and_split_back_in_order(repo, delay_ms):
    # A model of variable width, slow enough that requests pile up behind the running batch.
    write_bundle(repo, "slow", 1, slow_model(steps=40, width=None), manifest=False)
    config = cpu_config(batching=BatchingConfig(max_queue_delay_ms=delay_ms))
    with BackgroundServer(repo, config) as server:
        # Different row counts, and two widths that must never share a batch.
        inputs = [np.full((1 + i % 3, 4 if i % 2 else 6), i, dtype=np.float32) for i in range(12)]
        with ThreadPoolExecutor(len(inputs)) as pool:
            responses = list(pool.map(lambda x: post(server.http_url, "slow", x), inputs))
        for x, response in zip(inputs, responses):
            assert response.status_code == 200, response.text
            np.testing.assert_array_equal(output(response), x)  # its own rows, in order
        executions, rows = batch_sizes(server.http_url, "slow")
        assert rows == sum(len(x) for x in inputs)  # every row ran exactly once
        assert executions < len(inputs)  # some requests shared a run


def test_full_queue_answers_503_with_retry_after(repo):
    write_bundle(repo, "slow", 1, slow_model(steps=60), manifest=False)
    config = cpu_config(batching=BatchingConfig(max_batch_size=1, max_queue_size=1))
    with BackgroundServer(repo, config) as server:
        x = np.arange(4, dtype=np.float32).reshape(1, 4)
        with ThreadPoolExecutor(10) as pool:
            responses = list(pool.map(lambda _: post(server.http_url, "slow", x), range(10)))
        statuses = [r.status_code for r in responses]
        assert 503 in statuses
        assert set(statuses) <= {200, 503}
        for response in responses:
            if response.status_code == 503:
                assert response.headers["retry-after"] == "1"
                assert "queue is full" in response.json()["error"]
            else:
                np.testing.assert_array_equal(output(response), x)
        metrics = httpx.get(f"{server.http_url}/metrics").text
        assert 'status="queue_full"' in metrics
        assert post(server.http_url, "slow", x).status_code == 200  # and it recovers


def test_batching_off_runs_each_request_alone(repo):
    write_bundle(repo, "linear", 1, linear_model())
    config = cpu_config(batching=BatchingConfig(enabled=False))
    with BackgroundServer(repo, config) as server:
        inputs = [np.full((2, 4), i, dtype=np.float32) for i in range(8)]
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda x: post(server.http_url, "linear", x), inputs))
        for x, response in zip(inputs, responses):
            assert response.status_code == 200, response.text
            np.testing.assert_allclose(output(response), x @ W + B, rtol=1e-5)
        assert batch_sizes(server.http_url, "linear") == (8, 16)
        config_doc = httpx.get(f"{server.http_url}/v2/models/linear/config").json()
        assert "dynamic_batching" not in config_doc
        assert config_doc["max_batch_size"] == 64  # still the request limit


def in_flight(url: str, model: str) -> dict[str, float]:
    """Requests in flight for ``model`` now, by protocol."""
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            name, labels = sample.name, sample.labels
            if name == "mlp_inference_in_flight_requests" and labels.get("model") == model:
                counts[labels["protocol"]] = counts.get(labels["protocol"], 0.0) + sample.value
    return counts


def test_grpc_and_rest_requests_share_one_batcher(repo, monkeypatch):
    # gRPC calls queue from grpc's call threads, REST ones from the loop. With one batcher per
    # model, a run of the model takes rows of both; with one per front end, none would. Rows
    # carry their protocol in their sign (REST positive, gRPC negative), and every run is
    # recorded as the model sees it. A first request holds the model until all the others are
    # in flight, so the next run has them all to take.
    blocker = np.full((1, 4), 1000.0, dtype=np.float32)
    running, release = threading.Event(), threading.Event()
    runs: list[np.ndarray] = []
    original = ModelRuntime.run

    def recording_run(self, feeds, output_names=None):
        x = np.array(feeds["x"], copy=True)
        if np.array_equal(x, blocker):
            running.set()
            assert release.wait(30), "the test never released the blocking request"
        runs.append(x)
        return original(self, feeds, output_names)

    monkeypatch.setattr(ModelRuntime, "run", recording_run)
    write_bundle(repo, "slow", 1, slow_model(steps=40, width=None), manifest=False)
    with BackgroundServer(repo, cpu_config()) as server:
        assert server.ports is not None
        address = server.ports.grpc_address

        def over_grpc(x: np.ndarray) -> np.ndarray:
            with triton_grpc.InferenceServerClient(address) as client:
                tensor = triton_grpc.InferInput("x", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                return client.infer("slow", [tensor]).as_numpy("y")

        def over_rest(x: np.ndarray) -> np.ndarray:
            response = post(server.http_url, "slow", x)
            assert response.status_code == 200, response.text
            return output(response)

        grpc_calls = [i % 3 != 0 for i in range(24)]
        inputs = [
            np.full((1 + i % 2, 4), -(i + 1) if over else i + 1, dtype=np.float32)
            for i, over in enumerate(grpc_calls)
        ]
        runs.clear()  # the warmup run at load is not a request
        with ThreadPoolExecutor(len(inputs) + 1) as pool:
            first = pool.submit(over_rest, blocker)
            assert running.wait(30)
            calls = [
                pool.submit(over_grpc if over else over_rest, x)
                for x, over in zip(inputs, grpc_calls)
            ]
            expected = {"grpc": sum(grpc_calls), "rest": 1 + grpc_calls.count(False)}
            deadline = time.monotonic() + 30
            while in_flight(server.http_url, "slow") != expected:
                assert time.monotonic() < deadline, in_flight(server.http_url, "slow")
                time.sleep(0.02)
            time.sleep(0.2)  # from in flight to queued is a validation away
            release.set()
            np.testing.assert_array_equal(first.result(), blocker)
            results = [call.result() for call in calls]
        for x, y in zip(inputs, results):
            np.testing.assert_array_equal(y, x)
        executions, rows = batch_sizes(server.http_url, "slow")
        assert rows == 1 + sum(len(x) for x in inputs)
        assert executions == len(runs) < len(inputs)
        mixed = [run for run in runs[1:] if (run > 0).any() and (run < 0).any()]
        assert mixed, f"no run held rows of both protocols: {[r[:, 0].tolist() for r in runs]}"
