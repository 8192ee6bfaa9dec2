"""A quick model's gRPC call runs at once in its own thread when nothing is queued (as a REST
request runs on the loop, mlp_serve.inline), and joins the batcher's queue when others wait.

A real server and client (GrpcServerThread, grpc on loopback) and the real batcher. The model's
run is wrapped so that one marked request holds its batch running until the test lets it go:
that is what makes "a batch is running" and "others are queued" states the test can set up.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_helpers import GrpcServerThread, linear_infer
from serve_helpers import B, W, cpu_config, linear_model, wait_for, write_bundle

from mlp_serve.batching import DynamicBatcher
from mlp_serve.runtime import ModelRuntime

BLOCKER = np.full((1, 4), 1000.0, dtype=np.float32)


@pytest.fixture
def held(monkeypatch):
    """(running, release, runs): the BLOCKER's run waits for ``release``; ``runs`` records the
    first column of every run's rows."""
    running, release = threading.Event(), threading.Event()
    runs: list[list[float]] = []
    original = ModelRuntime.run

    def holding_run(self, feeds, output_names=None):
        x = np.asarray(feeds["x"])
        if np.array_equal(x, BLOCKER):
            running.set()
            assert release.wait(30), "the test never released the held batch"
        runs.append(x[:, 0].tolist())
        return original(self, feeds, output_names)

    monkeypatch.setattr(ModelRuntime, "run", holding_run)
    yield running, release, runs
    release.set()


def test_a_quick_models_call_runs_at_once_beside_a_running_batch_and_queues_behind_others(
    repo, held
):
    running, release, runs = held
    write_bundle(repo, "linear", 1, linear_model())
    alone = np.arange(8, dtype=np.float32).reshape(2, 4)
    queued_rows, joining_rows = np.full((1, 4), 2.0, np.float32), np.full((1, 4), 3.0, np.float32)
    with (
        GrpcServerThread(repo, cpu_config()) as server,
        grpc.insecure_channel(server.address) as channel,
        ThreadPoolExecutor(3) as pool,
    ):
        assert server.dataplane is not None
        runner = server.dataplane.repository.get("linear").runner
        assert isinstance(runner, DynamicBatcher)
        # A caller thread leads a batch that stays running; nothing is queued behind it.
        leader = pool.submit(runner.run_in_thread, {"x": BLOCKER}, ["y"])
        assert running.wait(30)
        # The quick model's call does not wait for that batch: it runs at once, on its own.
        np.testing.assert_allclose(linear_infer(channel, alone), alone @ W + B, rtol=1e-5)
        assert runs[-1] == alone[:, 0].tolist() and runner.queued == 0

        # With a request queued behind the batch, a call joins the queue (and its batch).
        queued = pool.submit(runner.run_in_thread, {"x": queued_rows}, ["y"])
        wait_for(lambda: runner.queued == 1)
        joining = pool.submit(linear_infer, channel, joining_rows)
        wait_for(lambda: runner.queued == 2)
        assert not joining.done()
        release.set()
        np.testing.assert_allclose(leader.result(30)["y"], BLOCKER @ W + B, rtol=1e-5)
        np.testing.assert_allclose(queued.result(30)["y"], queued_rows @ W + B, rtol=1e-5)
        np.testing.assert_allclose(joining.result(30), joining_rows @ W + B, rtol=1e-5)
    # The two that queued ran as one batch, after the held one.
    assert runs[-2:] == [[1000.0], [2.0, 3.0]]


def test_with_a_queue_delay_a_quick_models_call_still_waits_for_company(repo, held):
    running, release, runs = held
    write_bundle(repo, "linear", 1, linear_model())
    rows = np.full((1, 4), 4.0, dtype=np.float32)
    config = cpu_config(batching={"max_queue_delay_ms": 1.0})
    with (
        GrpcServerThread(repo, config) as server,
        grpc.insecure_channel(server.address) as channel,
        ThreadPoolExecutor(2) as pool,
    ):
        assert server.dataplane is not None
        runner = server.dataplane.repository.get("linear").runner
        assert isinstance(runner, DynamicBatcher)
        leader = pool.submit(runner.run_in_thread, {"x": BLOCKER}, ["y"])
        assert running.wait(30)
        # Nothing queued, but the delay says requests wait for company: it queues.
        call = pool.submit(linear_infer, channel, rows)
        wait_for(lambda: runner.queued == 1)
        assert not call.done()
        release.set()
        np.testing.assert_allclose(call.result(30), rows @ W + B, rtol=1e-5)
        leader.result(30)
    assert runs[-1] == [4.0]


def test_a_bug_in_the_data_plane_is_an_internal_error_counted_and_the_server_goes_on(
    repo, monkeypatch
):
    # The request accounting turns any exception into an answer: a bug must not crash the call
    # thread nor leave the request counted in flight.
    from mlp_serve.dataplane import DataPlane

    original = DataPlane._response
    calls = {"n": 0}

    def buggy_once(entry, request, names, results):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("a bug")
        return original(entry, request, names, results)

    monkeypatch.setattr(DataPlane, "_response", staticmethod(buggy_once))
    write_bundle(repo, "linear", 1, linear_model())
    rows = np.ones((1, 4), dtype=np.float32)
    with (
        GrpcServerThread(repo, cpu_config()) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        with pytest.raises(grpc.RpcError) as failed:
            linear_infer(channel, rows)
        error = failed.value
        assert error.code() == grpc.StatusCode.INTERNAL  # type: ignore[attr-defined]
        assert error.details() == "internal error: ValueError: a bug"  # type: ignore[attr-defined]
        np.testing.assert_allclose(linear_infer(channel, rows), rows @ W + B, rtol=1e-5)
        assert server.dataplane is not None and server.dataplane.registry is not None
        registry, dataplane = server.dataplane.registry, server.dataplane
        labels = {"model": "linear", "version": "1", "protocol": "grpc"}
        requests = "mlp_inference_requests_total"
        assert registry.get_sample_value(requests, {**labels, "status": "error"}) == 1
        assert registry.get_sample_value(requests, {**labels, "status": "ok"}) == 1
        assert registry.get_sample_value("mlp_inference_in_flight_requests", labels) == 0
        assert dataplane.in_flight == 0
