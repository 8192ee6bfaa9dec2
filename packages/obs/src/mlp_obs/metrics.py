"""Prometheus metrics of training, inference and the machine they run on.

Names follow Prometheus conventions: an ``mlp_`` prefix, base units (``_seconds``, ``_bytes``,
``_ratio``) and ``_total`` on counters. Each family set takes a ``CollectorRegistry`` so that
tests and embedded uses keep their own; production code uses the module's :data:`REGISTRY`.

    metrics = InferenceMetrics()
    register_system_metrics()
    server, port = start_metrics_server(9100)
    with metrics.track_request("penguins", "1", "rest") as request:
        ...
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import psutil
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    start_http_server,
)
from prometheus_client import (
    CollectorRegistry as CollectorRegistry,  # re-exported: servers build their own registries
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mlp_obs.gpu import GpuUnavailable, read_gpus

# mlp's own registry rather than prometheus_client's global one: the exposition then holds mlp's
# families and the process ones, and importing a library that registers globally changes nothing.
REGISTRY = CollectorRegistry()

# From half a millisecond (a small tabular model on CPU) to ten seconds (a large image batch).
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
EPOCH_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)

OK = "ok"
ERROR = "error"


class TrainingMetrics:
    """Loss, metric values, progress and throughput of training runs, labelled by run."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else REGISTRY
        self.loss = Gauge(
            "mlp_training_loss", "Latest loss of a split", ["run", "split"], registry=registry
        )
        self.metric = Gauge(
            "mlp_training_metric",
            "Latest value of an evaluation metric of a split",
            ["run", "split", "metric"],
            registry=registry,
        )
        self.epochs = Counter(
            "mlp_training_epochs_total", "Epochs completed", ["run"], registry=registry
        )
        self.steps = Counter(
            "mlp_training_steps_total", "Optimizer steps taken", ["run"], registry=registry
        )
        self.samples_per_second = Gauge(
            "mlp_training_samples_per_second",
            "Training throughput of the latest epoch",
            ["run"],
            registry=registry,
        )
        self.epoch_duration = Histogram(
            "mlp_training_epoch_duration_seconds",
            "Wall time of one epoch",
            ["run"],
            buckets=EPOCH_BUCKETS,
            registry=registry,
        )

    def observe_epoch(
        self,
        run: str,
        epoch_seconds: float,
        samples: int,
        losses: Mapping[str, float],
        metrics: Mapping[str, Mapping[str, float]] | None = None,
    ) -> None:
        """Record a finished epoch.

        ``losses`` maps a split to its loss (``{"train": 0.4, "val": 0.5}``); ``metrics`` maps a
        split to its metric values (``{"val": {"accuracy": 0.93}}``).
        """
        self.epochs.labels(run).inc()
        self.epoch_duration.labels(run).observe(epoch_seconds)
        if epoch_seconds > 0:
            self.samples_per_second.labels(run).set(samples / epoch_seconds)
        for split, loss in losses.items():
            self.loss.labels(run, split).set(loss)
        for split, values in (metrics or {}).items():
            for name, value in values.items():
                self.metric.labels(run, split, name).set(value)

    def step(self, run: str, n: int = 1) -> None:
        self.steps.labels(run).inc(n)


class RequestTracking:
    """One request being answered (:meth:`InferenceMetrics.track_request`): set ``status`` to
    record a failure. A plain class, not a generator context manager: it runs on every request
    of a server's hot path."""

    __slots__ = ("_duration", "_in_flight", "_key", "_metrics", "_start", "status")

    def __init__(
        self, metrics: InferenceMetrics, key: tuple[str, str, str], in_flight: Any, duration: Any
    ) -> None:
        self.status = OK
        self._metrics = metrics
        self._key = key
        self._in_flight = in_flight
        self._duration = duration
        self._start = 0.0

    def __enter__(self) -> RequestTracking:
        self._in_flight.inc()
        self._start = time.perf_counter()
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        # Cancellations and disconnects are failures too; a status the caller already set
        # (e.g. "invalid_input") says more than the generic one.
        if kind is not None and self.status == OK:
            self.status = ERROR
        self._duration.observe(time.perf_counter() - self._start)
        self._metrics._count(self._key, self.status)
        self._in_flight.dec()


class InferenceMetrics:
    """Requests, latencies, batch sizes and loaded models of an inference server."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else REGISTRY
        self.requests = Counter(
            "mlp_inference_requests_total",
            "Inference requests answered",
            ["model", "version", "protocol", "status"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "mlp_inference_request_duration_seconds",
            "Time from receiving a request to answering it",
            ["model", "version", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_duration = Histogram(
            "mlp_inference_queue_duration_seconds",
            "Time a request waited before its batch ran",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.compute_duration = Histogram(
            "mlp_inference_compute_duration_seconds",
            "Time the model took to run one batch",
            ["model", "version", "provider"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "mlp_inference_batch_size",
            "Rows or images in one model execution",
            ["model", "version"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "mlp_inference_in_flight_requests",
            "Requests being answered now",
            ["model", "version", "protocol"],
            registry=registry,
            # Several worker processes (prometheus_client's multiprocess mode): the live ones' sum.
            multiprocess_mode="livesum",
        )
        self.models_loaded = Gauge(
            "mlp_inference_models_loaded",
            "Model versions loaded and ready",
            registry=registry,
            # Several workers: what every live worker has ready (each loads its own copy).
            multiprocess_mode="livemin",
        )
        self.model_info = Gauge(
            "mlp_inference_model_info",
            "A loaded model version and the onnxruntime execution provider that runs it",
            ["model", "version", "provider"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self._providers: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        # Label children by their label values: ``labels()`` validates and locks on each call,
        # a cost paid per request on a server's hot path. None of these series is ever removed.
        self._request_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._counter_children: dict[tuple[str, str, str, str], Any] = {}
        self._batch_children: dict[tuple[str, str, str], tuple[Any, Any, Any]] = {}

    def track_request(self, model: str, version: str, protocol: str) -> RequestTracking:
        """Count, time and label one request: ``with metrics.track_request(...) as tracking``.

        An exception records status ``error``, unless the caller set a more telling one
        (``tracking.status = "invalid_input"``).
        """
        key = (model, version, protocol)
        children = self._request_children.get(key)
        if children is None:
            children = (self.in_flight.labels(*key), self.request_duration.labels(*key))
            self._request_children[key] = children
        return RequestTracking(self, key, *children)

    def _count(self, key: tuple[str, str, str], status: str) -> None:
        counter_key = (*key, status)
        counter = self._counter_children.get(counter_key)
        if counter is None:
            counter = self._counter_children[counter_key] = self.requests.labels(*counter_key)
        counter.inc()

    def observe_batch(
        self,
        model: str,
        version: str,
        provider: str,
        *,
        size: int,
        compute_seconds: float,
        queue_seconds: Iterable[float] = (),
    ) -> None:
        """Record one model execution and how long each of its requests waited for it."""
        key = (model, version, provider)
        children = self._batch_children.get(key)
        if children is None:
            children = (
                self.batch_size.labels(model, version),
                self.compute_duration.labels(*key),
                self.queue_duration.labels(model, version),
            )
            self._batch_children[key] = children
        batch_size, compute, queue = children
        batch_size.observe(size)
        compute.observe(compute_seconds)
        for seconds in queue_seconds:
            queue.observe(seconds)

    def model_loaded(self, model: str, version: str, provider: str) -> None:
        with self._lock:
            previous = self._providers.get((model, version))
            if previous is not None and previous != provider:
                self._remove_info(model, version, previous)
            self._providers[(model, version)] = provider
            self.model_info.labels(model, version, provider).set(1)
            self.models_loaded.set(len(self._providers))

    def model_unloaded(self, model: str, version: str) -> None:
        with self._lock:
            provider = self._providers.pop((model, version), None)
            if provider is not None:
                self._remove_info(model, version, provider)
            self.models_loaded.set(len(self._providers))

    def _remove_info(self, model: str, version: str, provider: str) -> None:
        # Zeroed first: in multiprocess mode remove() forgets the series in this process only,
        # and the value already written to the shared file would still say 1.
        self.model_info.labels(model, version, provider).set(0)
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # there: unsupported, with a warning
            self.model_info.remove(model, version, provider)


class SystemCollector(Collector):
    """Machine-wide CPU utilisation and memory, read from psutil at each scrape."""

    def __init__(self) -> None:
        # cpu_percent(None) measures since the previous call; the first call only sets the start.
        psutil.cpu_percent(interval=None)

    def describe(self) -> Iterable[Metric]:
        return _system_families()

    def collect(self) -> Iterable[Metric]:
        cpu, used, total = _system_families()
        cpu.add_metric([], psutil.cpu_percent(interval=None) / 100.0)
        memory = psutil.virtual_memory()
        # total - available is what applications cannot get back; psutil's "used" leaves out
        # buffers and cache inconsistently across platforms.
        used.add_metric([], float(memory.total - memory.available))
        total.add_metric([], float(memory.total))
        return [cpu, used, total]


def _system_families() -> list[GaugeMetricFamily]:
    return [
        GaugeMetricFamily(
            "mlp_system_cpu_utilization_ratio", "CPU utilisation of the machine, 0 to 1"
        ),
        GaugeMetricFamily("mlp_system_memory_used_bytes", "Memory in use (total minus available)"),
        GaugeMetricFamily("mlp_system_memory_total_bytes", "Physical memory of the machine"),
    ]


class GpuCollector(Collector):
    """Utilisation and memory of each NVIDIA GPU through NVML (:mod:`mlp_obs.gpu`).

    A machine without nvidia-ml-py, the driver or a GPU yields no samples rather than errors.
    """

    _LABELS = ("gpu", "name")

    def describe(self) -> Iterable[Metric]:
        return _gpu_families()

    def collect(self) -> Iterable[Metric]:
        try:
            _, gpus = read_gpus()
        except GpuUnavailable:
            return []
        utilization, used, total = _gpu_families()
        for gpu in gpus:
            labels = [str(gpu.index), gpu.name]
            used.add_metric(labels, float(gpu.memory_used_bytes))
            total.add_metric(labels, float(gpu.memory_total_bytes))
            if gpu.utilization_ratio is not None:
                utilization.add_metric(labels, gpu.utilization_ratio)
        return [utilization, used, total]


def _gpu_families() -> list[GaugeMetricFamily]:
    labels = list(GpuCollector._LABELS)
    return [
        GaugeMetricFamily("mlp_gpu_utilization_ratio", "GPU busy time, 0 to 1", labels=labels),
        GaugeMetricFamily("mlp_gpu_memory_used_bytes", "GPU memory in use", labels=labels),
        GaugeMetricFamily("mlp_gpu_memory_total_bytes", "GPU memory", labels=labels),
    ]


def register_system_metrics(
    registry: CollectorRegistry | None = None, *, machine: bool = True
) -> CollectorRegistry:
    """Add process metrics and, with ``machine``, machine and GPU metrics to ``registry`` (once
    per registry). Several processes of one machine (training ranks) set ``machine`` in one of
    them only, so that the machine's series are exposed once."""
    registry = registry if registry is not None else REGISTRY
    if machine:
        registry.register(SystemCollector())
    # prometheus_client's own collector: process CPU seconds, resident memory, open files.
    ProcessCollector(registry=registry)
    if machine:
        registry.register(GpuCollector())
    return registry


class ConstantLabels(Collector):
    """Every family of ``source`` with ``labels`` added to each of its samples: labels of the
    exposing process (a training rank) that the families' own label names do not carry."""

    def __init__(self, source: CollectorRegistry, labels: Mapping[str, str]) -> None:
        self.source = source
        self.labels = dict(labels)

    def collect(self) -> Iterable[Metric]:
        for family in self.source.collect():
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            labelled.samples = [
                sample._replace(labels={**sample.labels, **self.labels})
                for sample in family.samples
            ]
            yield labelled


def start_metrics_server(
    port: int = 0, addr: str = "127.0.0.1", registry: CollectorRegistry | None = None
) -> tuple[Any, int]:
    """Serve ``registry`` at ``http://addr:port/metrics`` in a daemon thread.

    Returns the server (call ``shutdown()`` and ``server_close()`` to stop it) and the port it
    bound, which is the one the system chose when ``port`` is 0.
    """
    server, _thread = start_http_server(
        port, addr=addr, registry=registry if registry is not None else REGISTRY
    )
    return server, server.server_address[1]


def render(registry: CollectorRegistry | None = None) -> tuple[bytes, str]:
    """The exposition of ``registry`` and its content type, for a web framework's own route."""
    return generate_latest(registry if registry is not None else REGISTRY), CONTENT_TYPE_LATEST
