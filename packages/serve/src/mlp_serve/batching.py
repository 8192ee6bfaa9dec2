"""Dynamic batching: concurrent requests to one model merged into one onnxruntime run.

A request joins its model's queue; one worker per model takes the oldest request, waits at most
``max_queue_delay_ms`` for others it can be stacked with (same input datatypes and non-batch
axes) up to ``max_batch_size`` rows, runs them as one batch in a thread and hands each request
its own rows back, in order. One batch per model runs at a time, so requests that arrive while
it runs form the next one. With a delay of 0 (the default, as in Triton) the worker never waits:
a lone request runs at once, and under load each batch is what queued while the previous ran. The queue is bounded: a request that finds it full is refused at once
(:class:`QueueFull`, HTTP 503) rather than waiting without bound.

With batching off, :class:`DirectRunner` runs each request on its own, still in a thread, so the
event loop is never blocked by onnxruntime: in the executor for a request that arrives on the
loop, or in the caller's own thread (:meth:`DirectRunner.run_in_thread`, the gRPC front end's
call threads), as onnxruntime sessions may run in several threads at once.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from mlp_serve.config import BatchingConfig
from mlp_serve.errors import InferenceError, ModelUnavailable, QueueFull

Arrays = dict[str, np.ndarray]
RunFn = Callable[[Arrays, Sequence[str]], Arrays]
# observe(batch rows, compute seconds, seconds each request waited)
ObserveFn = Callable[[int, float, list[float]], None]


class RunFailed(InferenceError):
    """onnxruntime raised while running a batch (a model bug or an input it cannot take)."""


@dataclass(eq=False)
class _Pending:
    feeds: Arrays
    outputs: tuple[str, ...]
    rows: int
    key: tuple
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


def _batch_key(feeds: Arrays) -> tuple:
    # Only requests whose inputs agree on everything but the first axis can be concatenated.
    return tuple(sorted((n, a.dtype.str, a.shape[1:]) for n, a in feeds.items()))


class DirectRunner:
    """Runs each request on its own in the executor (batching off, or a model that cannot batch)."""

    def __init__(self, run: RunFn, executor: Executor, observe: ObserveFn) -> None:
        self._run = run
        self._executor = executor
        self._observe = observe
        self._closed = False

    @property
    def queued(self) -> int:
        return 0

    @property
    def closed(self) -> bool:
        return self._closed

    def run_in_thread(self, feeds: Arrays, outputs: Sequence[str]) -> Arrays:
        """Run in the calling thread, which must not be the event loop's (it blocks)."""
        start = time.perf_counter()
        results = _run_safely(self._run, feeds, tuple(outputs))
        compute = time.perf_counter() - start
        self._observe(_rows(feeds), compute, [0.0])
        return results

    async def submit(self, feeds: Arrays, outputs: Sequence[str]) -> Arrays:
        if self._closed:
            raise ModelUnavailable("the model is being unloaded")
        submitted = time.perf_counter()
        outputs_tuple = tuple(outputs)

        def run() -> tuple[Arrays, float, float]:
            start = time.perf_counter()
            results = _run_safely(self._run, feeds, outputs_tuple)
            return results, start, time.perf_counter() - start

        results, started, compute = await asyncio.get_running_loop().run_in_executor(
            self._executor, run
        )
        self._observe(_rows(feeds), compute, [started - submitted])
        return results

    async def close(self) -> None:
        self._closed = True


class DynamicBatcher:
    """Queues requests to one model and runs them in merged batches (see the module docstring)."""

    def __init__(
        self, run: RunFn, executor: Executor, config: BatchingConfig, observe: ObserveFn
    ) -> None:
        self._run = run
        self._executor = executor
        self._config = config
        self._observe = observe
        self._queue: collections.deque[_Pending] = collections.deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._worker: asyncio.Task | None = None

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def submit(self, feeds: Arrays, outputs: Sequence[str]) -> Arrays:
        if self._closing:
            raise ModelUnavailable("the model is being unloaded")
        if len(self._queue) >= self._config.max_queue_size:
            raise QueueFull(
                f"the model's queue is full ({self._config.max_queue_size} requests waiting)",
                hint="Retry after a moment, or raise serve.batching.max_queue_size.",
            )
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work())
        rows = int(next(iter(feeds.values())).shape[0])
        pending = _Pending(
            feeds,
            tuple(outputs),
            rows,
            _batch_key(feeds),
            asyncio.get_running_loop().create_future(),
        )
        self._queue.append(pending)
        self._wakeup.set()
        return await pending.future

    async def close(self) -> None:
        """Refuse new requests, finish the queued ones, stop the worker."""
        self._closing = True
        self._wakeup.set()
        if self._worker is not None:
            await self._worker

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            first = self._queue.popleft()
            batch, rows = [first], first.rows
            deadline = loop.time() + self._config.max_queue_delay_ms / 1000.0
            while True:
                rows = self._take_matching(batch, rows)
                remaining = deadline - loop.time()
                if rows >= self._config.max_batch_size or remaining <= 0 or self._closing:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    self._take_matching(batch, rows)
                    break
            await self._execute(batch)

    def _take_matching(self, batch: list[_Pending], rows: int) -> int:
        """Move the queued requests that stack with ``batch`` and still fit into it."""
        key, limit = batch[0].key, self._config.max_batch_size
        kept: collections.deque[_Pending] = collections.deque()
        while self._queue:
            pending = self._queue.popleft()
            if pending.future.done():  # its caller went away
                continue
            if pending.key == key and rows + pending.rows <= limit:
                batch.append(pending)
                rows += pending.rows
            else:
                kept.append(pending)
        self._queue = kept
        return rows

    async def _execute(self, batch: list[_Pending]) -> None:
        batch = [p for p in batch if not p.future.done()]
        if not batch:
            return
        names = list(batch[0].feeds)
        feeds = (
            batch[0].feeds
            if len(batch) == 1
            else {n: np.concatenate([p.feeds[n] for p in batch], axis=0) for n in names}
        )
        outputs = list(dict.fromkeys(name for p in batch for name in p.outputs))
        total = sum(p.rows for p in batch)

        def run() -> tuple[Arrays, float, float]:
            start = time.perf_counter()
            results = _run_safely(self._run, feeds, outputs)
            return results, start, time.perf_counter() - start

        try:
            results, started, compute = await asyncio.get_running_loop().run_in_executor(
                self._executor, run
            )
            parts = _split(results, [p.rows for p in batch], total)
        except InferenceError as exc:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        self._observe(total, compute, [started - p.enqueued for p in batch])
        for pending, part in zip(batch, parts):
            if not pending.future.done():
                pending.future.set_result({n: part[n] for n in pending.outputs})


def _rows(feeds: Arrays) -> int:
    first = next(iter(feeds.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1


def _split(results: Arrays, sizes: list[int], total: int) -> list[Arrays]:
    for name, array in results.items():
        if np.ndim(array) == 0 or array.shape[0] != total:
            raise RunFailed(
                f"output {name!r} has shape {list(np.shape(array))} for a batch of {total}: "
                "the model does not keep the batch axis first, so it cannot be batched",
                hint="Set serve.batching.enabled=false for this server.",
            )
    bounds = np.cumsum([0, *sizes])
    return [
        {name: array[start:end] for name, array in results.items()}
        for start, end in itertools.pairwise(bounds)
    ]


def _run_safely(run: RunFn, feeds: Arrays, outputs: Sequence[str]) -> Arrays:
    try:
        return run(feeds, outputs)
    except InferenceError:
        raise
    except Exception as exc:  # onnxruntime's errors are untyped; none may crash the server
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunFailed(f"the model failed to run: {message}") from exc
