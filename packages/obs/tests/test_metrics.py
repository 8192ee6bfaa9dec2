from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from mlp_obs.metrics import (
    GpuCollector,
    InferenceMetrics,
    TrainingMetrics,
    register_system_metrics,
    render,
    start_metrics_server,
)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def scrape(registry: CollectorRegistry) -> Iterator:
    server, port = start_metrics_server(0, registry=registry)
    assert port > 0

    def fetch() -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert response.status == 200
            text = response.read().decode()
        return {family.name: family for family in text_string_to_metric_families(text)}

    yield fetch
    server.shutdown()
    server.server_close()


def value(family, name: str, **labels: str) -> float:
    matches = [s for s in family.samples if s.name == name and s.labels == labels]
    assert len(matches) == 1, f"{name}{labels} not in {family.samples}"
    return matches[0].value


def test_training_metrics_are_exposed(registry: CollectorRegistry, scrape) -> None:
    training = TrainingMetrics(registry)
    training.step("r1", 50)
    training.step("r1")
    training.observe_epoch(
        "r1", 2.0, 1000, {"train": 0.5, "val": 0.75}, {"val": {"accuracy": 0.9, "f1": 0.8}}
    )
    training.observe_epoch("r1", 4.0, 1000, {"train": 0.25})

    families = scrape()
    assert (
        value(families["mlp_training_loss"], "mlp_training_loss", run="r1", split="train") == 0.25
    )
    assert value(families["mlp_training_loss"], "mlp_training_loss", run="r1", split="val") == 0.75
    metric = families["mlp_training_metric"]
    assert value(metric, "mlp_training_metric", run="r1", split="val", metric="accuracy") == 0.9
    assert value(metric, "mlp_training_metric", run="r1", split="val", metric="f1") == 0.8
    epochs = families["mlp_training_epochs"]
    assert epochs.type == "counter"
    assert value(epochs, "mlp_training_epochs_total", run="r1") == 2
    assert value(families["mlp_training_steps"], "mlp_training_steps_total", run="r1") == 51
    throughput = families["mlp_training_samples_per_second"]
    assert value(throughput, "mlp_training_samples_per_second", run="r1") == 250
    duration = families["mlp_training_epoch_duration_seconds"]
    assert duration.type == "histogram"
    assert value(duration, "mlp_training_epoch_duration_seconds_count", run="r1") == 2
    assert value(duration, "mlp_training_epoch_duration_seconds_sum", run="r1") == 6.0
    assert value(duration, "mlp_training_epoch_duration_seconds_bucket", run="r1", le="5.0") == 2
    assert value(duration, "mlp_training_epoch_duration_seconds_bucket", run="r1", le="1.0") == 0


def test_inference_metrics_are_exposed(registry: CollectorRegistry, scrape) -> None:
    inference = InferenceMetrics(registry)
    inference.model_loaded("penguins", "1", "CPUExecutionProvider")
    inference.model_loaded("digits", "2", "CPUExecutionProvider")
    inference.model_loaded("digits", "2", "CUDAExecutionProvider")  # reloaded on the GPU
    inference.model_loaded("old", "1", "CPUExecutionProvider")
    inference.model_unloaded("old", "1")

    for _ in range(3):
        with inference.track_request("penguins", "1", "rest"):
            pass
    with inference.track_request("penguins", "1", "grpc") as request:
        request.status = "invalid_input"
    with pytest.raises(RuntimeError), inference.track_request("penguins", "1", "rest"):
        raise RuntimeError("session failed")
    inference.observe_batch(
        "penguins", "1", "CPUExecutionProvider",
        size=3, compute_seconds=0.002, queue_seconds=[0.001, 0.0007, 0.0002],
    )  # fmt: skip

    with inference.track_request("penguins", "1", "rest"):
        in_flight_now = scrape()["mlp_inference_in_flight_requests"]
    assert value(
        in_flight_now, "mlp_inference_in_flight_requests",
        model="penguins", version="1", protocol="rest",
    ) == 1  # fmt: skip

    families = scrape()
    requests = families["mlp_inference_requests"]
    assert requests.type == "counter"
    name = "mlp_inference_requests_total"
    base = {"model": "penguins", "version": "1"}
    assert value(requests, name, **base, protocol="rest", status="ok") == 4
    assert value(requests, name, **base, protocol="grpc", status="invalid_input") == 1
    assert value(requests, name, **base, protocol="rest", status="error") == 1
    latency = families["mlp_inference_request_duration_seconds"]
    count = "mlp_inference_request_duration_seconds_count"
    assert value(latency, count, **base, protocol="rest") == 5
    assert value(latency, count, **base, protocol="grpc") == 1
    assert {s.labels["le"] for s in latency.samples if s.name.endswith("_bucket")} >= {
        "0.0005", "0.001", "10.0", "+Inf"
    }  # fmt: skip
    queue = families["mlp_inference_queue_duration_seconds"]
    assert value(queue, "mlp_inference_queue_duration_seconds_count", **base) == 3
    assert value(queue, "mlp_inference_queue_duration_seconds_bucket", **base, le="0.0005") == 1
    compute = families["mlp_inference_compute_duration_seconds"]
    cpu = {**base, "provider": "CPUExecutionProvider"}
    assert value(compute, "mlp_inference_compute_duration_seconds_sum", **cpu) == 0.002
    batch = families["mlp_inference_batch_size"]
    assert value(batch, "mlp_inference_batch_size_bucket", **base, le="2.0") == 0
    assert value(batch, "mlp_inference_batch_size_bucket", **base, le="4.0") == 1
    in_flight = families["mlp_inference_in_flight_requests"]
    for protocol in ("rest", "grpc"):
        assert value(in_flight, "mlp_inference_in_flight_requests", **base, protocol=protocol) == 0
    loaded = families["mlp_inference_models_loaded"]
    assert value(loaded, "mlp_inference_models_loaded") == 2
    info = families["mlp_inference_model_info"].samples
    assert sorted((s.labels["model"], s.labels["version"], s.labels["provider"]) for s in info) == [
        ("digits", "2", "CUDAExecutionProvider"),
        ("penguins", "1", "CPUExecutionProvider"),
    ]
    assert all(s.value == 1 for s in info)


def test_system_and_process_metrics(registry: CollectorRegistry, scrape) -> None:
    register_system_metrics(registry)
    families = scrape()

    cpu = value(families["mlp_system_cpu_utilization_ratio"], "mlp_system_cpu_utilization_ratio")
    assert 0.0 <= cpu <= 1.0
    used = value(families["mlp_system_memory_used_bytes"], "mlp_system_memory_used_bytes")
    total = value(families["mlp_system_memory_total_bytes"], "mlp_system_memory_total_bytes")
    assert total > used > 0
    resident = families["process_resident_memory_bytes"]
    assert value(resident, "process_resident_memory_bytes") > 10 * 2**20  # a Python process
    assert value(families["process_cpu_seconds"], "process_cpu_seconds_total") > 0


def test_family_names_follow_prometheus_conventions(registry: CollectorRegistry, scrape) -> None:
    TrainingMetrics(registry).step("r1")
    with InferenceMetrics(registry).track_request("m", "1", "rest"):
        pass
    register_system_metrics(registry)
    families = scrape()

    assert len(families) > 15
    for family in families.values():
        assert family.name.startswith(("mlp_", "process_")), family.name
        if family.type == "counter":
            totals = [s for s in family.samples if not s.name.endswith("_created")]
            assert all(s.name == f"{family.name}_total" for s in totals), family.name


def test_gpu_collector_reports_only_real_gpus() -> None:
    families = list(GpuCollector().collect())
    gpus = _nvml_device_count()
    if gpus == 0:
        assert families == []
        return
    samples: list[Sample] = [s for family in families for s in family.samples]
    totals = [s for s in samples if s.name == "mlp_gpu_memory_total_bytes"]
    assert len(totals) == gpus
    assert all(s.value > 0 for s in totals)
    ratios = [s.value for s in samples if s.name == "mlp_gpu_utilization_ratio"]
    assert all(0.0 <= r <= 1.0 for r in ratios)


def _nvml_device_count() -> int:
    # Asks NVML directly, independently of the collector, whether this machine has GPUs.
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return 0
    return pynvml.nvmlDeviceGetCount()


def test_render_gives_the_exposition_and_its_content_type(registry: CollectorRegistry) -> None:
    TrainingMetrics(registry).step("r9", 3)
    body, content_type = render(registry)
    assert content_type.startswith("text/plain")
    assert b'mlp_training_steps_total{run="r9"} 3.0' in body
