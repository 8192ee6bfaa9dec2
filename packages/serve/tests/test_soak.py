"""A soak: a real `mlp serve` process under mixed REST and gRPC load, good and bad requests, while
a new model version is published, the model is reloaded and another unloaded and loaded again.

It asserts that no good request failed (none lost while versions changed), that the server's
resident memory stopped growing after the warm-up (the second half's increase stays under a
bound), and that its open file descriptors came back to their count before the load once the
clients left, and its threads nearly so. Thread pools that grow on demand may keep a thread or
two more: grpc core's event-engine pool (it shrinks on grpc's schedule), and the bounded Python
pools (grpc's call threads, onnxruntime's runs, asyncio's executor), which start a thread when a
call finds none idle at that instant, however long the warm-up ran. A leak grows with the run's
length instead; the ten-minute run reports the counts. The CI run is short; ``MLP_SOAK_SECONDS=600`` runs it for ten
minutes, and ``-s`` prints the figures (requests, failures, RSS start/end/peak, fds, threads).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import numpy as np
import psutil
import pytest
from serve_helpers import B, W, linear_model, start_server_process, write_bundle
from tritonclient.grpc import service_pb2 as triton

SECONDS = float(os.environ.get("MLP_SOAK_SECONDS", "20"))
TOKEN = "soak-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
METADATA = (("authorization", f"Bearer {TOKEN}"),)
INFER = "/inference.GRPCInferenceService/ModelInfer"
MIB = 1 << 20
# Resident memory may move by allocator noise, not grow: the second half's rise stays under this.
GROWTH_BOUND_MIB = 8.0
WEIGHTS = {"1": W, "2": 2 * W}
GRPC_POOL = "event_engine"  # the name (comm) of grpc core's worker threads
GRPC_POOL_SLACK = 2  # linear/1 and the version published mid-way
POOL_SLACK = 2  # threads the bounded Python pools may add after the warm-up (module docstring)


@dataclass
class Tally:
    """What the clients saw, by kind of request."""

    counts: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    versions: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ok(self, kind: str, version: str = "") -> None:
        with self.lock:
            self.counts[kind] += 1
            if version:
                self.versions[version] += 1

    def fail(self, kind: str, why: str) -> None:
        with self.lock:
            self.counts[kind + " FAILED"] += 1
            if len(self.failures) < 20:
                self.failures.append(f"{kind}: {why}")


# --- the clients ------------------------------------------------------------------------------


def check_y(x: np.ndarray, y: np.ndarray, version: str) -> str:
    if version not in WEIGHTS:
        return f"answered by version {version!r}"
    if not np.allclose(y, x @ WEIGHTS[version] + B, rtol=1e-4, atol=1e-5):
        return f"wrong answer from version {version}"
    return ""


def rest_good(url: str, tally: Tally, stop: threading.Event, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
        while not stop.is_set():
            x = rng.normal(size=(int(rng.integers(1, 5)), 4)).astype(np.float32)
            document = {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "FP32",
                        "shape": list(x.shape),
                        "data": x.ravel().tolist(),
                    }
                ]
            }
            try:
                reply = client.post("/v2/models/linear/infer", json=document)
            except httpx.HTTPError as exc:
                tally.fail("rest good", repr(exc))
                continue
            if reply.status_code != 200:
                tally.fail("rest good", f"{reply.status_code} {reply.text[:200]}")
                continue
            body = reply.json()
            y = np.array(body["outputs"][0]["data"], dtype=np.float32).reshape(-1, 3)
            problem = check_y(x, y, str(body["model_version"]))
            if problem:
                tally.fail("rest good", problem)
            else:
                tally.ok("rest good", str(body["model_version"]))


def grpc_good(address: str, tally: Tally, stop: threading.Event, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with grpc.insecure_channel(address) as channel:
        stub = channel.unary_unary(INFER)
        while not stop.is_set():
            x = rng.normal(size=(int(rng.integers(1, 5)), 4)).astype(np.float32)
            request = triton.ModelInferRequest(model_name="linear")
            request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
            request.raw_input_contents.append(x.tobytes())
            try:
                reply = triton.ModelInferResponse.FromString(
                    stub(request.SerializeToString(), metadata=METADATA, timeout=30)
                )
            except grpc.RpcError as exc:
                tally.fail("grpc good", f"{exc.code().name} {exc.details()}")
                continue
            y = np.frombuffer(reply.raw_output_contents[0], dtype="<f4").reshape(-1, 3)
            problem = check_y(x, y, reply.model_version)
            if problem:
                tally.fail("grpc good", problem)
            else:
                tally.ok("grpc good", reply.model_version)


REST_BAD = [
    (
        {},
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}',
        400,
    ),
    ({}, b"not json", 400),
    ({"Inference-Header-Content-Length": "9999"}, b'{"inputs": []}', 400),
    ({"Inference-Header-Content-Length": "abc"}, b"{}", 400),
    ({"Authorization": "Bearer wrong"}, b"{}", 401),
]
GRPC_BAD = [b"\xff\xff\xff", b"\x0a\x06linear\x22\x03\x0a\x01x"]


def rest_bad(url: str, tally: Tally, stop: threading.Event, seed: int) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in itertools.count(seed):
            if stop.is_set():
                return
            headers, body, status = REST_BAD[i % len(REST_BAD)]
            try:
                reply = client.post(
                    "/v2/models/linear/infer", content=body, headers={**AUTH, **headers}
                )
            except httpx.HTTPError as exc:
                tally.fail("rest bad", repr(exc))
                continue
            if reply.status_code == status and reply.json().get("error"):
                tally.ok("rest bad")
            else:
                tally.fail("rest bad", f"{reply.status_code} for {body[:40]!r}: {reply.text[:200]}")
            time.sleep(0.005)  # bad requests are a share of the load, not most of it


def grpc_bad(address: str, tally: Tally, stop: threading.Event, seed: int) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = channel.unary_unary(INFER)
        for i in itertools.count(seed):
            if stop.is_set():
                return
            try:
                stub(GRPC_BAD[i % len(GRPC_BAD)], metadata=METADATA, timeout=30)
                tally.fail("grpc bad", "a bad request was answered")
            except grpc.RpcError as exc:
                if exc.code() is grpc.StatusCode.INVALID_ARGUMENT:
                    tally.ok("grpc bad")
                else:
                    tally.fail("grpc bad", f"{exc.code().name} {exc.details()}")
            time.sleep(0.005)


CLIENTS = [rest_good, rest_good, grpc_good, grpc_good, rest_bad, grpc_bad]


class Load:
    """The clients, each in a thread, until :meth:`stop`."""

    def __init__(self, url: str, address: str, tally: Tally, copies: int = 1) -> None:
        self.stop_event = threading.Event()
        self.threads = [
            threading.Thread(
                target=client,
                args=(
                    url if client in (rest_good, rest_bad) else address,
                    tally,
                    self.stop_event,
                    n,
                ),
                daemon=True,
            )
            for n, client in enumerate(CLIENTS * copies)
        ]
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(60)
        assert not any(t.is_alive() for t in self.threads), "a client hung"


# --- the server's resources ---------------------------------------------------------------------


@dataclass
class Sample:
    seconds: float
    rss: int
    fds: int
    threads: int


def sample(process: psutil.Process, started: float) -> Sample:
    return Sample(
        time.monotonic() - started,
        process.memory_info().rss,
        process.num_fds(),
        process.num_threads(),
    )


def settled(process: psutil.Process, fds: int, threads: int, wait: float = 15.0) -> Sample:
    """The server's counts once its fds and its own threads (:func:`own_threads`) are back to
    at most ``fds`` and ``threads``, or after ``wait`` seconds: closed connections take a moment
    to be noticed."""
    deadline = time.monotonic() + wait
    while True:
        now = sample(process, 0)
        if now.fds <= fds and own_threads(process.pid) <= threads:
            return now
        if time.monotonic() > deadline:
            return now
        time.sleep(0.2)


def thread_names(pid: int) -> Counter:
    """The server's threads by name (Linux's /proc), to say which ones did not go away."""
    names: Counter = Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            names[(task / "comm").read_text().strip()] += 1
    return names


def own_threads(pid: int) -> int:
    """Threads less grpc core's event-engine pool, which grows under load and shrinks on its own
    schedule (it is grpc's, bounded by grpc; GRPC_POOL_SLACK bounds what it may keep)."""
    names = thread_names(pid)
    return sum(names.values()) - names[GRPC_POOL]


def growth_mib(samples: list[Sample]) -> tuple[float, float]:
    """(increase, slope per minute) of RSS in MiB over ``samples``: the mean of their last fifth
    over the mean of their first fifth, and the least-squares slope."""
    fifth = max(len(samples) // 5, 1)
    first = statistics.fmean(s.rss for s in samples[:fifth])
    last = statistics.fmean(s.rss for s in samples[-fifth:])
    t = np.array([s.seconds for s in samples])
    rss = np.array([s.rss for s in samples], dtype=float)
    slope = float(np.polyfit(t, rss, 1)[0]) * 60 if len(samples) > 1 else 0.0
    return (last - first) / MIB, slope / MIB


# --- the soak -----------------------------------------------------------------------------------


def publish(repo: Path, staging: Path, version: int, weights: np.ndarray) -> None:
    """A new version appears whole: written beside the repository, then renamed into it."""
    write_bundle(staging, "linear", version, linear_model(weights, B))
    os.replace(staging / "linear" / str(version), repo / "linear" / str(version))


def admin(url: str, action: str, model: str) -> httpx.Response:
    return httpx.post(f"{url}/v2/repository/models/{model}/{action}", headers=AUTH, timeout=60)


def aux_answers(url: str) -> int:
    document = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]
    }
    return httpx.post(
        f"{url}/v2/models/aux/infer", json=document, headers=AUTH, timeout=30
    ).status_code


@pytest.fixture
def server(tmp_path):
    repo = tmp_path / "repo"
    write_bundle(repo, "linear", 1, linear_model())
    write_bundle(repo, "aux", 1, linear_model())
    env = {**os.environ, "MLP_SERVE_TOKENS": f"inference,admin {TOKEN}", "MLP_LOG_LEVEL": "WARNING"}
    process, url, address = start_server_process(repo, "--set", "poll_seconds=0.5", env=env)
    try:
        yield process, url, address, repo, tmp_path / "staging"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_soak(server):
    process, url, address, repo, staging = server
    server_process = psutil.Process(process.pid)

    # Warm-up: three times the soak's clients for a while, and once each admin action, so the thread
    # pools the server grows on demand (grpc's call threads, onnxruntime's runs, the loader,
    # asyncio's default executor) are as large as the soak will need; then the counts with no
    # client connected.
    warm = Tally()
    # Three times the soak's clients: a pool grows when a call finds no idle thread at that
    # instant, so on a slow machine twice was not always enough to reach the soak's peak.
    load = Load(url, address, warm, copies=3)
    time.sleep(max(3.0, SECONDS * 0.08))
    _ok(admin(url, "load", "linear"))
    _unload_aux(url)
    _load_aux(url)
    load.stop()
    time.sleep(1.0)  # the closed connections noticed
    before = sample(server_process, 0)
    names_before = thread_names(process.pid)
    own_before = own_threads(process.pid)
    assert not warm.failures, warm.failures

    tally = Tally()
    started = time.monotonic()
    samples: list[Sample] = []
    events: dict[str, float] = {}
    load = Load(url, address, tally)
    done = started + SECONDS
    steps = [
        (0.15, "publish linear/2", lambda: publish(repo, staging, 2, WEIGHTS["2"])),
        (0.25, "reload linear under load", lambda: _ok(admin(url, "load", "linear"))),
        (0.30, "unload aux", lambda: _unload_aux(url)),
        (0.35, "load aux", lambda: _load_aux(url)),
    ]
    try:
        while time.monotonic() < done:
            samples.append(sample(server_process, started))
            elapsed = (time.monotonic() - started) / SECONDS
            while steps and elapsed >= steps[0][0]:
                _, name, step = steps.pop(0)
                step()
                events[name] = round(time.monotonic() - started, 1)
            assert process.poll() is None, "the server died"
            time.sleep(0.25)
    finally:
        load.stop()
    after = settled(server_process, before.fds, own_before + POOL_SLACK)
    names_after = thread_names(process.pid)
    second_half = [s for s in samples if s.seconds >= SECONDS / 2]
    increase, slope = growth_mib(second_half)
    figures = {
        "seconds": SECONDS,
        "requests": dict(tally.counts),
        "answered by version": dict(tally.versions),
        "events (s)": events,
        "rss MiB start/end/peak": [
            round(samples[0].rss / MIB, 1),
            round(samples[-1].rss / MIB, 1),
            round(max(s.rss for s in samples) / MIB, 1),
        ],
        "rss second half: increase MiB, slope MiB/min": [round(increase, 2), round(slope, 2)],
        "fds before/peak/after": [before.fds, max(s.fds for s in samples), after.fds],
        "threads before/peak/after": [
            before.threads,
            max(s.threads for s in samples),
            after.threads,
        ],
        "threads by name before/after": [dict(names_before), dict(names_after)],
    }
    print("\nsoak:", json.dumps(figures, indent=1))

    assert not tally.failures, tally.failures  # no good request lost, every bad one refused
    assert tally.counts["rest good"] > 50 and tally.counts["grpc good"] > 50, tally.counts
    assert tally.counts["rest bad"] > 10 and tally.counts["grpc bad"] > 10, tally.counts
    assert tally.versions["1"] and tally.versions["2"], "the published version never answered"
    assert not steps, f"events not reached: {steps}"
    assert increase < GROWTH_BOUND_MIB, figures
    assert after.fds <= before.fds, figures
    assert own_threads(process.pid) <= own_before + POOL_SLACK, (names_before, names_after)
    assert names_after[GRPC_POOL] <= names_before[GRPC_POOL] + GRPC_POOL_SLACK, names_after

    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0


def _ok(reply: httpx.Response) -> None:
    assert reply.status_code == 200, reply.text


def _unload_aux(url: str) -> None:
    _ok(admin(url, "unload", "aux"))
    assert aux_answers(url) in (404, 503)  # unloaded: refused, not answered


def _load_aux(url: str) -> None:
    _ok(admin(url, "load", "aux"))
    assert aux_answers(url) == 200
