"""The data plane that every front end (REST, gRPC) shares.

It owns the model repository, the runners (dynamic batchers) and the thread pool onnxruntime
runs in, and answers in protocol-neutral types (:mod:`mlp_serve.types`). A front end only
translates its wire format; it never touches onnxruntime. Every failure of a request leaves
:meth:`DataPlane.infer` as an :class:`~mlp_serve.errors.InferenceError`, which carries the
HTTP status and gRPC code to answer with.

The data plane lives on one event loop. :meth:`DataPlane.infer_in_thread` is the one entry meant
for other threads (the gRPC front end's call threads): it answers a request in the calling
thread, reading the repository's snapshot and going through the model's runner (a batcher
shared with the loop's requests, or a direct run), and counts the request in flight under a
lock, so that :meth:`DataPlane.stop` waits for it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlp_core.tensors import TensorSpec, from_numpy_dtype
from mlp_obs.log import get_logger

# mlp-obs owns the Prometheus dependency; its module re-exports the registry class.
from mlp_obs.metrics import CollectorRegistry, InferenceMetrics, RequestTracking
from mlp_serve import __version__
from mlp_serve.batching import COMPANY_WAIT_SECONDS, DirectRunner, DynamicBatcher, OnEndFn
from mlp_serve.config import ServeConfig
from mlp_serve.deadlines import within
from mlp_serve.errors import (
    Cancelled,
    DeadlineExceeded,
    InferenceError,
    InvalidInput,
    ModelNotFound,
    ModelUnavailable,
    QueueFull,
)
from mlp_serve.inline import is_quick, runs_inline
from mlp_serve.ratelimit import rate_limiter_for
from mlp_serve.repository import ModelRepository, ModelVersion
from mlp_serve.runtime import ModelRuntime
from mlp_serve.types import InferRequest, InferResponse, ModelMetadata, Tensor
from mlp_serve.validation import validate_inputs, validate_outputs

if TYPE_CHECKING:
    from mlp_serve.workers.admin import SharedAdmin

log = get_logger(__name__)

SERVER_NAME = "mlp"
PLATFORM = "onnxruntime_onnx"
# The Open Inference Protocol extensions this server implements (GET /v2 lists them).
EXTENSIONS = ["binary_tensor_data", "model_configuration", "model_repository"]
# Metrics label for requests naming a model the server does not have: clients choose names,
# and one label value per typo would grow the exposition without bound.
UNKNOWN_MODEL = "_unknown"

_TRITON_TYPES = {"BYTES": "TYPE_STRING"}


def status_label(error: BaseException) -> str:
    """The ``status`` label of a failed request in the request counter."""
    for cls, label in (
        (InvalidInput, "invalid_input"),
        (ModelNotFound, "not_found"),
        (QueueFull, "queue_full"),
        (DeadlineExceeded, "timeout"),
        (Cancelled, "cancelled"),
        (ModelUnavailable, "unavailable"),
    ):
        if isinstance(error, cls):
            return label
    return "error"


class DataPlane:
    def __init__(
        self,
        repository_path: str | os.PathLike[str],
        config: ServeConfig,
        metrics: InferenceMetrics | None = None,
    ) -> None:
        self.config = config
        # A private registry unless given metrics: two servers in one process (tests, notebooks)
        # would otherwise clash registering the same families.
        # ``registry`` is the one /metrics renders: the private one, or None (the caller's).
        self.registry: CollectorRegistry | None = None
        if metrics is None:
            self.registry = CollectorRegistry()
            metrics = InferenceMetrics(self.registry)
        self.metrics = metrics
        # Per-client rate limits (None: none set), shared by both front ends.
        self.rate_limiter = rate_limiter_for(config.rate_limit)
        workers = max(4, os.cpu_count() or 1)
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="mlp-onnxruntime")
        self._load_executor = ThreadPoolExecutor(1, thread_name_prefix="mlp-model-load")
        self.repository = ModelRepository(
            Path(repository_path),
            config,
            executor=self._load_executor,
            metrics=self.metrics,
            make_runner=self._make_runner,
        )
        self._started = False
        self._stopping = False
        self._stopped = False
        # Requests in flight, on the loop and in other threads: changed under the lock. ``_idle``
        # is set once a stop has begun and none is left (what stop() waits for); only then, as
        # setting and clearing an Event on every request would cost each a few microseconds.
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        self._idle = threading.Event()
        self._poller: asyncio.Task | None = None
        # A worker of `mlp serve --workers N` sets this: admin load/unload then reach every
        # worker (mlp_serve.workers.admin.SharedAdmin).
        self.admin: SharedAdmin | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.repository.sync()
        self._started = True
        if self.config.poll_seconds:
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        log.info(
            "data plane started",
            repository=str(self.repository.root),
            ready=self.repository.index(),
        )

    async def stop(self, drain_seconds: float = 30) -> None:
        """Refuse new requests, let the ones in flight finish (up to ``drain_seconds``), unload."""
        if self._stopped:
            return
        with self._in_flight_lock:
            # Under the lock: a thread that entered before this is counted below; one that
            # enters after it sees _stopping and refuses.
            self._stopping = True
            if not self._in_flight:
                self._idle.set()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self._in_flight:
            log.info("draining requests in flight", requests=self._in_flight)
            # In a thread: the loop keeps answering the requests it is waiting for.
            loop = asyncio.get_running_loop()
            if not await loop.run_in_executor(None, self._idle.wait, drain_seconds):
                log.warning("drain timed out", requests=self._in_flight, seconds=drain_seconds)
        await self.repository.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._load_executor.shutdown(wait=False, cancel_futures=True)
        self._stopped = True
        log.info("data plane stopped")

    def live(self) -> bool:
        return not self._stopped

    def ready(self) -> bool:
        if not self._started or self._stopping:
            return False
        if self.config.models is None:
            return any(self.repository.has_ready(n) for n in self.repository.names())
        return all(self.repository.has_ready(n) for n in self.config.models)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # -- metadata --------------------------------------------------------------------------

    def server_metadata(self) -> dict:
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}

    def model_metadata(self, name: str, version: str | None = None) -> ModelMetadata:
        entry = self.repository.get(name, version)
        versions = [str(v) for v in self.repository.ready_versions(name)]
        return ModelMetadata(
            name=name,
            versions=versions if version in (None, "") else [str(entry.version)],
            platform=PLATFORM,
            inputs=list(entry.runtime.inputs),
            # A detection model answers post-processed outputs (and its raw head on request).
            outputs=list(entry.detection.outputs if entry.detection else entry.runtime.outputs),
            parameters=self._parameters(entry),
        )

    def model_ready(self, name: str, version: str | None = None) -> bool:
        if self._stopping:
            return False
        try:
            self.repository.get(name, version)
        except InferenceError:
            return False
        return True

    def model_config(self, name: str, version: str | None = None) -> dict:
        """The model's configuration in Triton's JSON form (what perf_analyzer reads)."""
        entry = self.repository.get(name, version)
        batch = entry.max_batch_size
        config: dict[str, Any] = {
            "name": name,
            "version": str(entry.version),
            "platform": PLATFORM,
            "backend": "onnxruntime",
            "max_batch_size": batch,
            "input": [_triton_tensor(t, batch) for t in entry.runtime.inputs],
            "output": [_triton_tensor(t, batch) for t in entry.runtime.outputs],
            "instance_group": [{"count": 1, "kind": _instance_kind(entry.runtime)}],
            # Config parameters are strings: lists and mappings travel as JSON text.
            "parameters": {
                key: {"string_value": value if isinstance(value, str) else json.dumps(value)}
                for key, value in self._parameters(entry).items()
            },
        }
        if entry.batching:
            batching = self.config.batching
            config["dynamic_batching"] = {
                "max_queue_delay_microseconds": int(batching.max_queue_delay_ms * 1000),
                "preferred_batch_size": [],
                "default_queue_policy": {"max_queue_size": batching.max_queue_size},
            }
        return config

    def model_entry(self, name: str, version: str | None = None) -> ModelVersion:
        """The loaded version (manifest, signature): for front ends that adapt requests."""
        return self.repository.get(name, version)

    def _parameters(self, entry: ModelVersion) -> dict[str, Any]:
        params: dict[str, Any] = {
            "execution_provider": entry.runtime.provider,
            "max_batch_size": entry.max_batch_size,
            "dynamic_batching": entry.batching,
        }
        manifest = entry.manifest
        if manifest is not None:
            params.update(task=manifest.task, kind=manifest.kind, precision=manifest.precision)
            if manifest.class_labels is not None:
                params["class_labels"] = list(manifest.class_labels)
            # What a remote client needs to build requests from raw rows or images: protocol
            # parameters are scalars, so these travel as JSON text.
            if manifest.feature_schema is not None:
                params["feature_schema"] = manifest.feature_schema.model_dump_json()
            if manifest.kind == "image":
                params["preprocessing"] = json.dumps(manifest.preprocessing)
        if entry.detection is not None:
            params.update(entry.detection.parameters())
        return params

    # -- repository ------------------------------------------------------------------------

    def repository_index(self) -> list[dict]:
        return self.repository.index()

    async def load_model(self, name: str) -> None:
        if self.admin is not None:
            await self.admin.load(name)
        else:
            await self.repository.load(name)

    async def unload_model(self, name: str) -> None:
        if self.admin is not None:
            await self.admin.unload(name)
        else:
            await self.repository.unload(name)

    # -- inference -------------------------------------------------------------------------

    async def infer(
        self, name: str, version: str | None, request: InferRequest, protocol: str
    ) -> InferResponse:
        self._enter()
        try:
            try:
                entry = self._lookup(name, version)
            except InferenceError as exc:
                known = name in self.repository.names()
                label = name if known else UNKNOWN_MODEL
                with self.metrics.track_request(label, version or "", protocol) as tracking:
                    tracking.status = status_label(exc)
                    raise
            with self._answered(entry, protocol):
                return await self._infer(entry, request)
        finally:
            self._leave()

    def infer_in_thread(
        self,
        name: str,
        version: str | None,
        request: InferRequest,
        protocol: str,
        *,
        timeout: float | None = None,
        on_end: OnEndFn | None = None,
    ) -> InferResponse | None:
        """:meth:`infer` in the calling thread (not the loop's), or None where it must run on the
        loop: a model not ready (the loop says why), being unloaded, or a stop begun.

        ``timeout`` (seconds) and ``on_end`` (grpc's ``context.add_callback``) withdraw the
        request from the model's queue when its time runs out or its call ends before it ran
        (see :meth:`DynamicBatcher.run_in_thread`).

        Thread-safe: the model comes from the repository's snapshot, onnxruntime sessions run in
        several threads at once, the batchers are thread-safe (this thread may lead batches that
        hold other callers' requests), and the metrics and the in-flight count take their locks.
        """
        entry = self.repository.ready_version(name, version)
        if entry is None or entry.runner.closed:
            return None
        self._enter()
        try:
            if self._stopping:
                return None
            with self._answered(entry, protocol):
                feeds, names = self._validate(entry, request)
                runner = entry.runner
                if not runner.queued and runs_inline(entry.runtime, self.config.batching, feeds):
                    # A quick model and nothing queued: at most this call would wait for a
                    # running batch, then run alone; it overlaps that batch instead, and skips
                    # the queue's bookkeeping and hand-offs, which cost more than the run
                    # (mlp_serve.inline).
                    results = runner.run_alone(feeds, names)
                else:
                    results = runner.run_in_thread(feeds, names, timeout=timeout, on_end=on_end)
                return self._response(entry, request, names, results)
        finally:
            self._leave()

    def _answered(self, entry: ModelVersion, protocol: str) -> _Answered:
        """Counts and times one request; every failure leaves as an :class:`InferenceError`."""
        tracking = self.metrics.track_request(entry.name, str(entry.version), protocol)
        return _Answered(tracking, entry.name)

    def _lookup(self, name: str, version: str | None) -> ModelVersion:
        if self._stopping:
            raise ModelUnavailable("the server is shutting down")
        return self.repository.get(name, version)

    async def _infer(self, entry: ModelVersion, request: InferRequest) -> InferResponse:
        feeds, names = self._validate(entry, request)
        if runs_inline(entry.runtime, self.config.batching, feeds):
            # A quick model: run on the loop's thread, rather than pay a thread hop that costs
            # more than the run (mlp_serve.inline).
            results = entry.runner.run_alone(feeds, names)
        else:
            results = await within(entry.runner.submit(feeds, names), self.config)
        return self._response(entry, request, names, results)

    @staticmethod
    def _validate(
        entry: ModelVersion, request: InferRequest
    ) -> tuple[dict[str, np.ndarray], list[str]]:
        runtime = entry.runtime
        feeds = validate_inputs(request, runtime.inputs, entry.max_batch_size)
        if entry.detection is not None:
            # Checked now (a bad threshold is refused before it costs a run); the batch runs
            # the raw head only, and each request's detections are computed in _response.
            entry.detection.plan(request)
            return feeds, [entry.detection.raw.name]
        names = validate_outputs([o.name for o in request.outputs], runtime.outputs)
        return feeds, names

    @staticmethod
    def _response(
        entry: ModelVersion,
        request: InferRequest,
        names: list[str],
        results: dict[str, np.ndarray],
    ) -> InferResponse:
        if entry.detection is not None:
            names, _ = entry.detection.plan(request)
            results = entry.detection.answer(request, names, results)
        return InferResponse(
            model_name=entry.name,
            model_version=str(entry.version),
            outputs=[_output_tensor(name, results[name]) for name in names],
            id=request.id,
        )

    def _enter(self) -> None:
        with self._in_flight_lock:
            self._in_flight += 1

    def _leave(self) -> None:
        with self._in_flight_lock:
            self._in_flight -= 1
            if self._in_flight == 0 and self._stopping:
                self._idle.set()

    def _make_runner(
        self, name: str, version: int, runtime: ModelRuntime, max_batch_size: int
    ) -> DynamicBatcher | DirectRunner:
        label = str(version)

        def observe(size: int, compute: float, waits: list[float]) -> None:
            self.metrics.observe_batch(
                name,
                label,
                runtime.provider,
                size=size,
                compute_seconds=compute,
                queue_seconds=waits,
            )

        if self.config.batching.enabled and max_batch_size > 0:
            # A quick model's calls run alone (mlp_serve.inline); a slower one's wait for company
            # under load, since merging saves more than the wait costs.
            return DynamicBatcher(
                runtime.run,
                self._executor,
                self.config.batching,
                observe,
                company_wait=0.0 if is_quick(runtime) else COMPANY_WAIT_SECONDS,
            )
        return DirectRunner(runtime.run, self._executor, observe)

    async def _poll(self) -> None:
        assert self.config.poll_seconds
        while True:
            await asyncio.sleep(self.config.poll_seconds)
            started = time.perf_counter()
            try:
                await self.repository.sync()
            except Exception:  # a bad scan must not stop polling for good
                log.exception("repository poll failed")
            log.debug("repository polled", seconds=round(time.perf_counter() - started, 4))


class _Answered:
    """:meth:`DataPlane._answered`: a plain class, not a generator context manager, as it runs
    on every request's path."""

    __slots__ = ("_model", "_tracking")

    def __init__(self, tracking: RequestTracking, model: str) -> None:
        self._tracking = tracking
        self._model = model

    def __enter__(self) -> None:
        self._tracking.__enter__()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: Any
    ) -> None:
        tracking = self._tracking
        if isinstance(error, InferenceError):
            tracking.status = status_label(error)
        elif isinstance(error, Exception):  # a bug here must still be an answer, not a crash
            log.exception("inference failed unexpectedly", model=self._model, exc_info=error)
            tracking.__exit__(kind, error, trace)
            raise InferenceError(f"internal error: {type(error).__name__}: {error}") from error
        tracking.__exit__(kind, error, trace)


def _triton_tensor(tensor: TensorSpec, max_batch_size: int) -> dict:
    # Triton leaves the batch axis out of dims when the model batches (max_batch_size > 0).
    dims = tensor.shape[1:] if max_batch_size > 0 else tensor.shape
    data_type = _TRITON_TYPES.get(tensor.datatype, f"TYPE_{tensor.datatype}")
    return {"name": tensor.name, "data_type": data_type, "dims": list(dims)}


def _instance_kind(runtime: ModelRuntime) -> str:
    return "KIND_CPU" if runtime.provider == "CPUExecutionProvider" else "KIND_GPU"


def _output_tensor(name: str, array: np.ndarray) -> Tensor:
    array = np.asarray(array)
    if array.dtype.kind in "OSU":
        # onnxruntime returns str for string tensors; the protocol carries bytes.
        flat = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in array.flat]
        data = np.empty(len(flat), dtype=object)
        data[:] = flat
        array = data.reshape(array.shape)
    return Tensor(name, from_numpy_dtype(array.dtype), list(array.shape), array)
