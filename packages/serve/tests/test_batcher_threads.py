"""The dynamic batcher on its own: callers in threads (gRPC's) and on the loop (REST's).

The batcher's run function here is plain Python that records every batch it is given, so each
test can say exactly which rows ran together; the server-level tests run onnxruntime.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mlp_serve.batching import DynamicBatcher, RunFailed
from mlp_serve.config import BatchingConfig
from mlp_serve.errors import DeadlineExceeded, ModelUnavailable, QueueFull


class Recorder:
    """y = 2x, after ``seconds``; fails for a batch holding a row of ``poison``."""

    def __init__(self, seconds: float = 0.0, poison: float | None = None) -> None:
        self.seconds = seconds
        self.poison = poison
        self.batches: list[int] = []
        self.observed: list[tuple[int, int]] = []  # (rows, requests) per batch
        self.running = 0
        self.most_running = 0
        self._lock = threading.Lock()

    def run(self, feeds, outputs):
        x = feeds["x"]
        with self._lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            time.sleep(self.seconds)
            if self.poison is not None and np.any(x == self.poison):
                raise ValueError("poisoned row")
            self.batches.append(len(x))
            return {"y": x * 2}
        finally:
            with self._lock:
                self.running -= 1

    def observe(self, rows: int, compute: float, waits: list[float]) -> None:
        self.observed.append((rows, len(waits)))


def batcher(recorder: Recorder, executor: ThreadPoolExecutor, **config) -> DynamicBatcher:
    return DynamicBatcher(recorder.run, executor, BatchingConfig(**config), recorder.observe)


def rows(value: float, count: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full((count, 3), value, dtype=np.float32)}


@pytest.fixture
def executor():
    with ThreadPoolExecutor(4) as pool:
        yield pool


def test_thread_callers_merge_and_each_gets_its_own_rows(executor):
    recorder = Recorder(seconds=0.002)
    runner = batcher(recorder, executor)

    def call(i: int) -> np.ndarray:
        return runner.run_in_thread(rows(i, 1 + i % 3), ["y"])["y"]

    with ThreadPoolExecutor(16) as callers:
        results = list(callers.map(call, range(200)))
    for i, y in enumerate(results):
        np.testing.assert_array_equal(y, np.full((1 + i % 3, 3), 2 * i, np.float32))
    assert sum(recorder.batches) == sum(1 + i % 3 for i in range(200))  # every row ran once
    assert len(recorder.batches) < 200  # requests shared runs
    assert recorder.most_running == 1  # one batch at a time
    assert [r for r, _ in recorder.observed] == recorder.batches
    assert sum(n for _, n in recorder.observed) == 200
    assert runner.queued == 0


def test_loop_and_thread_callers_share_batches(executor):
    recorder = Recorder(seconds=0.003)
    runner = batcher(recorder, executor)

    async def main() -> tuple[list, list]:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(8) as callers:
            threaded = [
                loop.run_in_executor(callers, runner.run_in_thread, rows(i), ["y"])
                for i in range(40)
            ]
            on_loop = [runner.submit(rows(100 + i), ["y"]) for i in range(40)]
            return await asyncio.gather(*threaded), await asyncio.gather(*on_loop)

    threaded, on_loop = asyncio.run(main())
    for i, result in enumerate(threaded):
        np.testing.assert_array_equal(result["y"], rows(2 * i)["x"])
    for i, result in enumerate(on_loop):
        np.testing.assert_array_equal(result["y"], rows(2 * (100 + i))["x"])
    assert sum(recorder.batches) == 80
    assert len(recorder.batches) < 80


def test_a_failed_batch_fails_its_callers_only_and_the_batcher_goes_on(executor):
    recorder = Recorder(seconds=0.001, poison=-1.0)
    runner = batcher(recorder, executor)

    def call(i: int):
        try:
            return runner.run_in_thread(rows(-1.0 if i == 7 else i), ["y"])["y"]
        except RunFailed as exc:
            return exc

    with ThreadPoolExecutor(8) as callers:
        results = list(callers.map(call, range(64)))
    failed = [i for i, r in enumerate(results) if isinstance(r, RunFailed)]
    assert 7 in failed
    assert all("poisoned row" in str(results[i]) for i in failed)
    for i, result in enumerate(results):
        if i not in failed:
            np.testing.assert_array_equal(result, rows(2 * i)["x"])
    np.testing.assert_array_equal(runner.run_in_thread(rows(5), ["y"])["y"], rows(10)["x"])


def test_the_queue_delay_holds_a_batch_until_it_is_full(executor):
    # Four callers, a batch of at most four rows, a long delay: the fourth arrival fills the
    # batch and wakes the leader, long before the delay is over.
    recorder = Recorder()
    runner = batcher(recorder, executor, max_batch_size=4, max_queue_delay_ms=5000)
    started = time.perf_counter()
    with ThreadPoolExecutor(4) as callers:
        results = list(callers.map(lambda i: runner.run_in_thread(rows(i), ["y"]), range(4)))
    assert time.perf_counter() - started < 4.0
    assert recorder.batches == [4]
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], rows(2 * i)["x"])


def test_a_lone_request_waits_out_the_delay_then_runs(executor):
    recorder = Recorder()
    runner = batcher(recorder, executor, max_queue_delay_ms=50)
    started = time.perf_counter()
    np.testing.assert_array_equal(runner.run_in_thread(rows(3), ["y"])["y"], rows(6)["x"])
    assert time.perf_counter() - started >= 0.05
    assert recorder.batches == [1]


class FirstRunWaits(Recorder):
    """A Recorder whose first run waits for ``release``: callers queue behind it meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.first_running = threading.Event()

    def run(self, feeds, outputs):
        if not self.first_running.is_set():
            self.first_running.set()
            assert self.release.wait(10)
        return super().run(feeds, outputs)


def batch_behind_a_first_run(runner: DynamicBatcher, recorder: FirstRunWaits, count: int) -> None:
    """One request runs (held) while ``count`` queue behind it: batches [1, count]."""
    with ThreadPoolExecutor(count + 1) as callers:
        first = callers.submit(runner.run_in_thread, rows(0), ["y"])
        assert recorder.first_running.wait(10)
        queued = [callers.submit(runner.run_in_thread, rows(i), ["y"]) for i in range(count)]
        while runner.queued < count:
            time.sleep(0.001)
        recorder.release.set()
        for future in [first, *queued]:
            future.result(10)
    assert recorder.batches == [1, count]


def company_batcher(recorder: Recorder, executor, company_wait: float) -> DynamicBatcher:
    return DynamicBatcher(
        recorder.run, executor, BatchingConfig(), recorder.observe, company_wait=company_wait
    )


def test_under_load_a_leader_waits_for_as_many_requests_as_the_last_batch_held(executor):
    # No queue delay configured. The last batch held three requests, so the next leader waits
    # (at most company_wait) until three are queued: callers arriving 50 ms apart, which would
    # each have run alone, share one run.
    recorder = FirstRunWaits()
    runner = company_batcher(recorder, executor, company_wait=5.0)
    batch_behind_a_first_run(runner, recorder, 3)
    started = time.perf_counter()
    with ThreadPoolExecutor(3) as callers:
        futures = []
        for i in range(3):
            futures.append(callers.submit(runner.run_in_thread, rows(10 + i), ["y"]))
            time.sleep(0.05)
        results = [f.result(10) for f in futures]
    assert recorder.batches == [1, 3, 3]
    assert time.perf_counter() - started < 4.0  # woken by the third arrival, not the cap
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], rows(2 * (10 + i))["x"])


def test_a_lone_caller_never_waits_for_company_and_a_drop_in_load_costs_one_wait(executor):
    recorder = FirstRunWaits()
    runner = company_batcher(recorder, executor, company_wait=2.0)
    batch_behind_a_first_run(runner, recorder, 2)
    took = []
    for i in range(3):  # one caller now, one request at a time
        started = time.perf_counter()
        np.testing.assert_array_equal(runner.run_in_thread(rows(i), ["y"])["y"], rows(2 * i)["x"])
        took.append(time.perf_counter() - started)
    assert recorder.batches == [1, 2, 1, 1, 1]
    assert took[0] >= 2.0  # the first waited for a second request, in vain
    assert max(took[1:]) < 1.0  # then a batch of one: nobody waits (for the 2 s)


def test_a_caller_whose_time_runs_out_during_a_company_wait_is_withdrawn(executor):
    recorder = FirstRunWaits()
    runner = company_batcher(recorder, executor, company_wait=1.0)
    batch_behind_a_first_run(runner, recorder, 3)  # the next leader waits for three
    with ThreadPoolExecutor(2) as callers:
        leader = callers.submit(runner.run_in_thread, rows(1), ["y"])
        time.sleep(0.05)  # the leader waits for company
        late = callers.submit(runner.run_in_thread, rows(2), ["y"], timeout=0.1)
        with pytest.raises(DeadlineExceeded):
            late.result(10)
        np.testing.assert_array_equal(leader.result(10)["y"], rows(2)["x"])
    assert recorder.batches == [1, 3, 1]  # the withdrawn request's row never ran
    assert runner.withdrawn == 1


def test_without_company_wait_requests_apart_run_alone(executor):
    recorder = FirstRunWaits()
    runner = company_batcher(recorder, executor, company_wait=0.0)
    batch_behind_a_first_run(runner, recorder, 3)
    with ThreadPoolExecutor(3) as callers:
        futures = []
        for i in range(3):
            futures.append(callers.submit(runner.run_in_thread, rows(i), ["y"]))
            time.sleep(0.05)
        [f.result(10) for f in futures]
    assert recorder.batches == [1, 3, 1, 1, 1]


def test_a_full_queue_refuses_at_once(executor):
    recorder = Recorder(seconds=0.05)
    runner = batcher(recorder, executor, max_batch_size=1, max_queue_size=1)
    outcomes: list[object] = []

    def call(i: int) -> None:
        try:
            outcomes.append(runner.run_in_thread(rows(i), ["y"]))
        except QueueFull as exc:
            outcomes.append(exc)

    with ThreadPoolExecutor(6) as callers:
        list(callers.map(call, range(6)))
    refused = [o for o in outcomes if isinstance(o, QueueFull)]
    assert refused and "queue is full" in str(refused[0])
    assert len(outcomes) == 6
    assert runner.run_in_thread(rows(1), ["y"])["y"][0, 0] == 2  # and it recovers


def test_close_finishes_what_is_queued_then_refuses_loop_callers(executor):
    recorder = Recorder(seconds=0.01)
    runner = batcher(recorder, executor, max_batch_size=1)

    async def main() -> list:
        queued = [asyncio.ensure_future(runner.submit(rows(i), ["y"])) for i in range(5)]
        await asyncio.sleep(0)  # let them queue
        await runner.close()
        assert all(f.done() for f in queued)  # close waited for every queued request
        with pytest.raises(ModelUnavailable):
            await runner.submit(rows(9), ["y"])
        return [f.result()["y"] for f in queued]

    results = asyncio.run(main())
    for i, y in enumerate(results):
        np.testing.assert_array_equal(y, rows(2 * i)["x"])
    assert runner.closed
    # A thread that found the model just before it was replaced is still answered.
    np.testing.assert_array_equal(runner.run_in_thread(rows(4), ["y"])["y"], rows(8)["x"])


def test_a_loop_caller_that_went_away_is_not_run(executor):
    # A REST client that disconnects cancels its request's future: while still queued, its rows
    # are dropped from the batch instead of run for nobody.
    recorder = Recorder(seconds=0.05)
    runner = batcher(recorder, executor, max_batch_size=1)

    async def main() -> list:
        first = asyncio.ensure_future(runner.submit(rows(1), ["y"]))
        await asyncio.sleep(0.01)  # the first runs; the next ones queue behind it
        gone = asyncio.ensure_future(runner.submit(rows(2), ["y"]))
        kept = asyncio.ensure_future(runner.submit(rows(3), ["y"]))
        await asyncio.sleep(0.01)
        gone.cancel()
        return [await first, await kept]

    first, kept = asyncio.run(main())
    np.testing.assert_array_equal(first["y"], rows(2)["x"])
    np.testing.assert_array_equal(kept["y"], rows(6)["x"])
    assert recorder.batches == [1, 1]  # the cancelled request never ran
