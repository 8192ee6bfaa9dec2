"""Dynamic batching: concurrent requests to one model merged into one onnxruntime run.

A request joins its model's queue. Batches are formed and run by whichever caller finds no batch
in progress: it becomes the *leader*, takes the oldest request and every queued one it can be
stacked with (same input datatypes and non-batch axes) up to ``max_batch_size`` rows, waits at
most ``max_queue_delay_ms`` (counted from the oldest request's arrival) for more, runs them as one
batch and hands each request its own rows back, in order. One batch per model runs at a time, so
requests that arrive while it runs form the next one. With a delay of 0 (the default, as in
Triton) a lone request runs at once, and under load each batch is what queued while the previous
one ran; for a model slower than a thread hop (``company_wait``, set by the data plane) a leader
under load also waits, briefly, for as many requests as the previous batch held
(:meth:`DynamicBatcher._take_batch`). The queue is bounded: a request that finds it full is refused at once
(:class:`QueueFull`, HTTP 503) rather than waiting without bound.

Who leads (flat combining, no dedicated thread): a caller in a thread of its own (the gRPC front
end's call threads, :meth:`DynamicBatcher.run_in_thread`) leads in that thread until its own
request is answered, then hands the lead to the next waiting caller thread, so batches never
wait for a hop to another thread. A caller on the event loop (:meth:`DynamicBatcher.submit`, the
REST front end) never blocks the loop: when it finds nobody leading, a thread of the executor
leads until the queue is empty. Both kinds of caller share one queue, so REST and gRPC requests
to a model are batched together.

With batching off, :class:`DirectRunner` runs each request on its own, still off the event loop:
in the executor for a request that arrives on the loop, or in the caller's own thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from mlp_obs.log import get_logger
from mlp_serve.config import BatchingConfig
from mlp_serve.errors import (
    Cancelled,
    DeadlineExceeded,
    InferenceError,
    ModelUnavailable,
    QueueBytesFull,
    QueueFull,
)

log = get_logger(__name__)

Arrays = dict[str, np.ndarray]
RunFn = Callable[[Arrays, Sequence[str]], Arrays]
# observe(batch rows, compute seconds, seconds each request waited)
ObserveFn = Callable[[int, float, list[float]], None]
# grpc's ServicerContext.add_callback: calls the function when the call ends (the client
# cancelled, the deadline passed); False if it has ended already.
OnEndFn = Callable[[Callable[[], None]], bool]


# How long, at most, a leader waits for company under load when no queue delay is configured
# (DynamicBatcher._take_batch): the delay the README suggested setting by hand for throughput.
COMPANY_WAIT_SECONDS = 0.001


class RunFailed(InferenceError):
    """onnxruntime raised while running a batch (a model bug or an input it cannot take)."""


@dataclass(eq=False)
class _Pending:
    """One request in the queue, and how its caller learns the outcome.

    A caller in a thread blocks on ``waiter`` (a lock held until the request is answered or the
    caller is made leader); a caller on the loop awaits ``future``.
    """

    feeds: Arrays
    outputs: tuple[str, ...]
    rows: int
    key: tuple
    waiter: threading.Lock | None = None
    future: asyncio.Future | None = None
    loop: asyncio.AbstractEventLoop | None = None
    enqueued: float = field(default_factory=time.perf_counter)
    result: Arrays | None = None
    error: InferenceError | None = None
    answered: bool = False
    promoted: bool = False  # told to lead (its waiter released without an answer)
    nbytes: int = 0
    queued: bool = False  # in the queue (not yet taken into a batch, nor withdrawn)
    leading: bool = False  # its caller thread leads (it checks its own deadline between batches)
    deadline: float | None = None  # perf_counter time after which a thread caller gives up
    ended: bool = False  # the caller's call ended (cancelled, deadline): it will not wait
    withdrawn: bool = False  # taken out of the queue before it ran; ``error`` says why

    @property
    def abandoned(self) -> bool:
        # A loop caller that went away (the client disconnected, a timeout): its rows need not
        # run.
        return self.future is not None and self.future.cancelled()

    def outcome(self) -> Arrays:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def _batch_key(feeds: Arrays) -> tuple:
    # Only requests whose inputs agree on everything but the first axis can be concatenated.
    return tuple(sorted((n, a.dtype.str, a.shape[1:]) for n, a in feeds.items()))


class DirectRunner:
    """Runs each request on its own (batching off, or a model that cannot batch)."""

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

    def run_in_thread(
        self,
        feeds: Arrays,
        outputs: Sequence[str],
        *,
        timeout: float | None = None,
        on_end: OnEndFn | None = None,
    ) -> Arrays:
        """Run in the calling thread, which must not be the event loop's (it blocks). Nothing
        waits in a queue here, so ``timeout`` and ``on_end`` (see
        :meth:`DynamicBatcher.run_in_thread`) have nothing to withdraw."""
        start = time.perf_counter()
        results = _run_safely(self._run, feeds, tuple(outputs))
        compute = time.perf_counter() - start
        self._observe(_rows(feeds), compute, [0.0])
        return results

    def run_alone(self, feeds: Arrays, outputs: Sequence[str]) -> Arrays:
        """Run at once in the calling thread (see :meth:`DynamicBatcher.run_alone`)."""
        return self.run_in_thread(feeds, outputs)

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
    """Queues requests to one model and runs them in merged batches (see the module docstring).

    Thread-safe: the queue and the lead are guarded by one lock, held only to queue and to take
    a batch, never while onnxruntime runs.
    """

    def __init__(
        self,
        run: RunFn,
        executor: Executor,
        config: BatchingConfig,
        observe: ObserveFn,
        *,
        company_wait: float = 0.0,
    ) -> None:
        """``company_wait``: with no queue delay configured, the most seconds a leader waits for
        as many requests as the previous batch held, when that was more than one (see
        :meth:`_take_batch`); 0 never waits."""
        self._run = run
        self._executor = executor
        self._config = config
        self._observe = observe
        self._company_wait = company_wait
        self._lock = threading.Lock()
        # Notified when enough rows queued to fill the batch the leader waits on (rows it holds
        # in ``_waiting_rows``), or enough requests to match the previous batch
        # (``_waiting_requests``): waking it for every arrival would cost a thread switch each.
        self._arrival = threading.Condition(self._lock)
        self._leader_waiting = False
        self._waiting_rows = 0
        self._waiting_requests = 0  # 0: the leader waits for rows only
        self._last_batch_requests = 1
        self._queued_rows = 0
        self._queued_bytes = 0
        # Requests taken out of the queue before they ran (caller gone, deadline passed).
        self.withdrawn = 0
        self._queue: collections.deque[_Pending] = collections.deque()
        self._leading = False
        self._closing = False
        self._idle = threading.Event()  # set while nobody leads and nothing is queued
        self._idle.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def closed(self) -> bool:
        return self._closing

    def run_in_thread(
        self,
        feeds: Arrays,
        outputs: Sequence[str],
        *,
        timeout: float | None = None,
        on_end: OnEndFn | None = None,
    ) -> Arrays:
        """The request's outputs, waited for in the calling thread (never the event loop's),
        which may lead batches meanwhile.

        ``timeout``: the most seconds the caller waits; after it, a request still queued is
        withdrawn (its rows never run) and :class:`DeadlineExceeded` raised; one whose batch
        is running is no longer waited for. ``on_end`` registers a callback for when the
        caller's call ends early (grpc's ``context.add_callback``: the client cancelled or its
        deadline passed): a request still queued is withdrawn then and its caller woken.

        A caller that found the model in the repository's snapshot just before it was replaced
        is still answered: the session lives until the last request that holds it is done.
        """
        pending = _Pending(feeds, tuple(outputs), _rows(feeds), _batch_key(feeds))
        pending.nbytes = _nbytes(feeds)
        if timeout is not None:
            pending.deadline = pending.enqueued + max(0.0, timeout)
        pending.waiter = threading.Lock()
        pending.waiter.acquire()
        if not self._enqueue(pending, refuse_when_closing=False):
            # Only a caller that waits watches its call: a new leader's request is the first
            # of its first batch, never withdrawn, and the callback would cost it a lock.
            if on_end is not None and not on_end(functools.partial(self._caller_ended, pending)):
                self._caller_ended(pending)  # it ended already: withdraw now
            # Released once: answered, made leader, or withdrawn because the call ended.
            if not pending.waiter.acquire(timeout=_remaining(pending.deadline)):
                late = self._gave_up(pending)
                if late is not None:
                    raise late
            if not pending.promoted:
                return pending.outcome()
        self._lead(pending)
        return pending.outcome()

    def run_alone(self, feeds: Arrays, outputs: Sequence[str]) -> Arrays:
        """Run at once in the calling thread, outside the queue: for a quick model's request on
        the event loop, or in a gRPC call's thread when nothing is queued (:mod:`mlp_serve.inline`),
        where the queue's bookkeeping and hand-offs cost more than the run. onnxruntime runs a
        session in several threads at once: it may overlap a batch that a gRPC caller leads."""
        start = time.perf_counter()
        results = _run_safely(self._run, feeds, tuple(outputs))
        self._observe(_rows(feeds), time.perf_counter() - start, [0.0])
        return results

    def _gave_up(self, pending: _Pending) -> InferenceError | None:
        """The caller's time ran out: withdraw its request if still queued. The error to raise
        if the caller must leave now; None if it was answered or promoted meanwhile (a
        promoted caller withdraws its own request as it takes the lead, then hands it on)."""
        with self._lock:
            if pending.answered or pending.promoted:
                return None
            if pending.withdrawn:
                return pending.error
            if pending.queued:
                self._withdraw_locked(pending, DeadlineExceeded(_TIMED_OUT))
                return pending.error
            # Its batch is running: not worth waiting for past the deadline.
            return DeadlineExceeded(f"{_TIMED_OUT} (its batch was running)")

    def _caller_ended(self, pending: _Pending) -> None:
        """grpc's callback when the call ends (any thread): withdraw the request if queued and
        wake its caller; a leader or promoted caller checks ``ended`` itself."""
        with self._lock:
            pending.ended = True
            if pending.answered or pending.promoted or pending.leading or not pending.queued:
                return
            self._withdraw_locked(pending, Cancelled(_CALLER_ENDED))
            assert pending.waiter is not None
            pending.waiter.release()

    def _withdraw_locked(self, pending: _Pending, error: InferenceError) -> None:
        self._queue.remove(pending)
        self._dequeued_locked(pending)
        pending.withdrawn, pending.error = True, error
        self.withdrawn += 1
        log.debug("request withdrawn from the queue", reason=error.message)

    def _expired_locked(self, pending: _Pending) -> bool:
        """For a leading caller, between batches: withdraw its own request if its call ended or
        its time ran out. True if it is withdrawn."""
        if not pending.queued:
            return False
        if pending.ended:
            self._withdraw_locked(pending, Cancelled(_CALLER_ENDED))
        elif pending.deadline is not None and time.perf_counter() >= pending.deadline:
            self._withdraw_locked(pending, DeadlineExceeded(_TIMED_OUT))
        return pending.withdrawn

    def _dequeued_locked(self, pending: _Pending) -> None:
        self._queued_rows -= pending.rows
        self._queued_bytes -= pending.nbytes
        pending.queued = False

    async def submit(self, feeds: Arrays, outputs: Sequence[str]) -> Arrays:
        loop = asyncio.get_running_loop()
        pending = _Pending(feeds, tuple(outputs), _rows(feeds), _batch_key(feeds))
        pending.nbytes = _nbytes(feeds)
        pending.future, pending.loop = loop.create_future(), loop
        if self._enqueue(pending, refuse_when_closing=True):
            self._lead_elsewhere()
        return await pending.future

    async def close(self) -> None:
        """Refuse new requests, let the queued ones finish."""
        with self._lock:
            self._closing = True
            self._arrival.notify_all()
        await asyncio.get_running_loop().run_in_executor(None, self._idle.wait)

    # -- queue -----------------------------------------------------------------------------

    def _enqueue(self, pending: _Pending, *, refuse_when_closing: bool) -> bool:
        """Queue ``pending``; True if its caller must lead (nobody else is)."""
        with self._lock:
            if self._closing and refuse_when_closing:
                raise ModelUnavailable("the model is being unloaded")
            if len(self._queue) >= self._config.max_queue_size:
                raise QueueFull(
                    f"the model's queue is full ({self._config.max_queue_size} requests waiting)",
                    hint="Retry after a moment, or raise serve.batching.max_queue_size.",
                )
            limit = self._config.max_queue_bytes
            # A request that finds the queue empty is always taken: it could never run otherwise.
            if self._queue and self._queued_bytes + pending.nbytes > limit:
                raise QueueBytesFull(
                    f"the model's queue is full: {self._queued_bytes} bytes of inputs wait and "
                    f"this request adds {pending.nbytes}, over serve.batching.max_queue_bytes "
                    f"({limit})",
                    hint="Retry after a moment, send smaller requests, or raise "
                    "serve.batching.max_queue_bytes.",
                )
            self._queue.append(pending)
            self._queued_rows += pending.rows
            self._queued_bytes += pending.nbytes
            pending.queued = True
            if self._leader_waiting and (
                self._waiting_rows + self._queued_rows >= self._config.max_batch_size
                or 0 < self._waiting_requests <= len(self._queue)
            ):
                self._arrival.notify()
            if self._leading:
                return False
            self._leading = pending.leading = True
            self._idle.clear()
            return True

    def _lead_elsewhere(self) -> None:
        """Lead from a thread of the executor (for callers on the loop, which must not block)."""
        try:
            self._executor.submit(self._lead, None)
        except RuntimeError:  # the executor is shut down: the server is stopping
            self._fail_queued(ModelUnavailable("the server is shutting down"))

    def _lead(self, mine: _Pending | None) -> None:
        """Run batches until ``mine`` is answered or withdrawn (or, for ``None``, the queue is
        empty), then pass the lead on."""
        if mine is not None:
            mine.leading = True
        while True:
            with self._lock:
                done = mine is None or mine.answered or mine.withdrawn
                if not done:
                    assert mine is not None
                    done = self._expired_locked(mine)
                if done:
                    if not self._queue:
                        self._leading = False
                        self._idle.set()
                        return
                    if mine is not None:
                        if self._promote_locked():
                            return
                        # Only loop callers are queued: a thread of the executor takes over.
                        break
            batch = self._take_batch()
            if batch:
                self._execute(batch, mine)
        self._lead_elsewhere()

    def _promote_locked(self) -> bool:
        """Hand the lead to the oldest queued caller thread; False if none is queued."""
        for pending in self._queue:
            if pending.waiter is not None:
                pending.promoted = True
                pending.waiter.release()
                return True
        return False

    def _take_batch(self) -> list[_Pending]:
        """The oldest queued request and those that stack with it, after the queue delay.

        With no delay configured, a leader still waits for company when the load says it is on
        its way: the previous batch held several requests, so about as many callers are sending
        their next ones. It waits until as many are queued, or ``company_wait`` after the oldest
        arrived. A lone caller's batches hold one request, so it never waits; when the load drops,
        one batch waits in vain and the next ones no longer do. Arrivals cannot be seen before
        they queue (grpc's threads and the loop's reads hold them), so the previous batch is
        the signal: with it, concurrent gRPC calls to a model of a few hundred microseconds
        merge into batches instead of running one by one.
        """
        with self._lock:
            while self._queue and self._queue[0].abandoned:
                self._abandoned_locked(self._queue.popleft())
            if not self._queue:
                return []
            first = self._queue.popleft()
            self._dequeued_locked(first)
            batch = [first]
            rows = self._take_matching(batch, first.rows)
            delay = self._config.max_queue_delay_ms / 1000.0
            wanted = 0  # requests the batch waits for (0: rows only, up to the delay)
            if delay <= 0 and self._company_wait > 0 and self._last_batch_requests > len(batch):
                delay, wanted = self._company_wait, self._last_batch_requests
            if delay > 0:
                deadline = first.enqueued + delay
                while rows < self._config.max_batch_size and not self._closing:
                    if wanted and len(batch) >= wanted:
                        break
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._leader_waiting, self._waiting_rows = True, rows
                    self._waiting_requests = wanted - len(batch) if wanted else 0
                    try:
                        self._arrival.wait(remaining)
                    finally:
                        self._leader_waiting, self._waiting_requests = False, 0
                    rows = self._take_matching(batch, rows)
            self._last_batch_requests = len(batch)
            return batch

    def _take_matching(self, batch: list[_Pending], rows: int) -> int:
        """Move the queued requests that stack with ``batch`` and still fit into it."""
        key, limit = batch[0].key, self._config.max_batch_size
        kept: collections.deque[_Pending] = collections.deque()
        for pending in self._queue:
            if pending.abandoned:
                self._abandoned_locked(pending)
            elif pending.key == key and rows + pending.rows <= limit:
                batch.append(pending)
                rows += pending.rows
                self._dequeued_locked(pending)
            else:
                kept.append(pending)
        self._queue = kept
        return rows

    def _abandoned_locked(self, pending: _Pending) -> None:
        # A loop caller that left (disconnected, timed out) while queued: withdrawn unrun.
        self._dequeued_locked(pending)
        pending.withdrawn = True
        self.withdrawn += 1

    # -- running ---------------------------------------------------------------------------

    def _execute(self, batch: list[_Pending], mine: _Pending | None) -> None:
        names = list(batch[0].feeds)
        feeds = (
            batch[0].feeds
            if len(batch) == 1
            else {n: np.concatenate([p.feeds[n] for p in batch], axis=0) for n in names}
        )
        outputs = list(dict.fromkeys(name for p in batch for name in p.outputs))
        total = sum(p.rows for p in batch)
        started = time.perf_counter()
        try:
            results = _run_safely(self._run, feeds, outputs)
            compute = time.perf_counter() - started
            parts = _split(results, [p.rows for p in batch], total)
        except InferenceError as exc:
            for pending in batch:
                self._answer(pending, None, exc, mine)
            return
        except Exception as exc:  # a bug here must still answer every caller
            error = InferenceError(f"internal error: {type(exc).__name__}: {exc}")
            for pending in batch:
                self._answer(pending, None, error, mine)
            return
        try:
            self._observe(total, compute, [started - p.enqueued for p in batch])
        except Exception:  # metrics must never leave a caller unanswered
            log.exception("recording a batch's metrics failed")
        for pending, part in zip(batch, parts):
            self._answer(pending, {n: part[n] for n in pending.outputs}, None, mine)

    @staticmethod
    def _answer(
        pending: _Pending,
        result: Arrays | None,
        error: InferenceError | None,
        mine: _Pending | None,
    ) -> None:
        pending.result, pending.error, pending.answered = result, error, True
        if pending.waiter is not None:
            if pending is not mine:  # the leader's own caller is not waiting: it is running
                pending.waiter.release()
        elif pending.loop is not None and pending.future is not None:
            # A closed loop (RuntimeError): nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                pending.loop.call_soon_threadsafe(_settle, pending.future, result, error)

    def _fail_queued(self, error: InferenceError) -> None:
        with self._lock:
            queued, self._queue = list(self._queue), collections.deque()
            self._queued_rows = 0
            self._queued_bytes = 0
            for pending in queued:
                pending.queued = False
            self._leading = False
            self._idle.set()
        for pending in queued:
            self._answer(pending, None, error, None)


def _settle(future: asyncio.Future, result: Arrays | None, error: InferenceError | None) -> None:
    if future.done():  # cancelled: its caller went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


_TIMED_OUT = "the request's time ran out before it was answered"
_CALLER_ENDED = "the call ended (cancelled or past its deadline) before the request ran"


def _remaining(deadline: float | None) -> float:
    """For ``Lock.acquire(timeout=...)``: seconds left, or -1 (no limit)."""
    return -1 if deadline is None else max(0.0, deadline - time.perf_counter())


def _nbytes(feeds: Arrays) -> int:
    """The bytes a request's inputs hold: the arrays, and the strings of BYTES tensors."""
    total = 0
    for array in feeds.values():
        total += array.nbytes
        if array.dtype == object:
            total += sum(len(v) for v in array.flat if isinstance(v, (bytes, str)))
    return total


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
    if len(sizes) == 1:  # a batch of one request (most of them, at low load): nothing to cut
        return [results]
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
