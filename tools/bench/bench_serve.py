"""Requests/s and p50/p99 latency of `mlp serve` (its defaults, and tuned by hand) against
in-process onnxruntime, a competent FastAPI server, a naive one, a competent grpcio server (and
the same answering nothing: grpc's floor) and KServe's Python model server, over REST and gRPC,
at concurrency 1 and 16.

Two seeded MLPs built here with onnx.helper (about 10k and 1M parameters, FP32 [-1, F] -> [-1, C])
are written as a bare model repository and served by every server at once, each server a
subprocess pinned to one core (``--server-core``). ``mlp`` is ``mlp serve REPO`` with nothing
else set; the others run onnxruntime with one intra-op thread and log no line per request.
The load generator, pinned to another core (``--client-core``), is wrk for REST and h2load for
gRPC when installed (``wrk_client.py``, ``h2load_client.py``; ``--load python`` for threads of
this process): one row per request, for ``--seconds`` per cell after a warm-up, REST over one
keep-alive connection per concurrent client, gRPC over one shared HTTP/2 connection. Request
bodies are encoded once. Cells run in rounds, in a rotated order each round, and each number
printed is the median over the rounds.

    .venv/bin/python tools/bench/bench_serve.py            # about 5 minutes on 2 cores
    .venv/bin/python tools/bench/bench_serve.py --quick    # about a minute
    .venv/bin/python tools/bench/bench_serve.py --servers mlp mlp-tuned mlp-delay mlp-nobatch
    .venv/bin/python tools/bench/bench_serve.py --provider CUDAExecutionProvider

The servers run with the Python that runs this script (its environment's ``mlp``).

KServe runs in its own environment, created on first use (``--kserve-venv``, default
``.venvs/bench-kserve``: ``uv venv`` + ``uv pip install kserve onnxruntime numpy``, or
onnxruntime-gpu for CUDA); ``--no-kserve`` leaves it out. Not a test: it prints numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import h2load_client  # beside this script, which Python puts first on sys.path
import numpy as np
import onnx
import onnxruntime as ort
import wrk_client
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import service_pb2

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
# The servers run in this script's environment (not resolved: a venv's python is a symlink).
SERVE_PYTHON = Path(sys.executable)
MLP = SERVE_PYTHON.parent / "mlp"
KSERVE_VENV = ROOT / ".venvs" / "bench-kserve"
CPU = "CPUExecutionProvider"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


# -- models ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    name: str
    layers: tuple[int, ...]  # features, hidden..., classes

    @property
    def features(self) -> int:
        return self.layers[0]

    @property
    def parameters(self) -> int:
        return sum(a * b + b for a, b in itertools.pairwise(self.layers))


MODELS = (
    ModelSpec("mlp_small", (16, 128, 64, 3)),
    ModelSpec("mlp_1m", (256, 1024, 768, 10)),
)


def build_model(spec: ModelSpec, seed: int = 0) -> onnx.ModelProto:
    """x [-1, F] -> (MatMul + Add + Relu)* -> MatMul + Add -> y [-1, C], seeded weights."""
    rng = np.random.default_rng(seed)
    nodes, initializers, current = [], [], "x"
    pairs = list(itertools.pairwise(spec.layers))
    for i, (fan_in, fan_out) in enumerate(pairs):
        w = (rng.normal(size=(fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = (rng.normal(size=(fan_out,)) * 0.01).astype(np.float32)
        initializers += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(pairs) - 1
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"mm{i}"]))
        nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], ["y" if last else f"add{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"add{i}"], [f"h{i}"]))
            current = f"h{i}"
    graph = helper.make_graph(
        nodes,
        spec.name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", spec.features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", spec.layers[-1]])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_repository(root: Path) -> None:
    """The models as bare ``root/<name>/1/model.onnx`` files (no manifest)."""
    for spec in MODELS:
        folder = root / spec.name / "1"
        folder.mkdir(parents=True)
        onnx.save(build_model(spec), folder / "model.onnx")


def providers_for(provider: str) -> list[str]:
    return [provider] if provider == CPU else [provider, CPU]


def ort_session(path: Path, provider: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=providers_for(provider))


# -- servers -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A server subprocess pinned to one core, with the ports it listens on."""

    label: str
    command: list[str]
    ready_path: str | None  # None: a gRPC-only server, ready when its port answers a call
    http_port: int | None
    grpc_port: int | None
    log: Path
    process: subprocess.Popen | None = None

    def start(self, core: int | None) -> None:
        def pin() -> None:
            if core is not None:
                os.sched_setaffinity(0, {core})

        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                self.command, stdout=out, stderr=subprocess.STDOUT, preexec_fn=pin, cwd=ROOT
            )

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                break
            if self.ready_path is None:
                if self.grpc_port is not None and grpc_ready(self.grpc_port):
                    return
            else:
                try:
                    assert self.http_port is not None
                    status, _ = http_get(self.http_port, self.ready_path)
                    if status == 200:
                        return
                except OSError:
                    pass
            time.sleep(0.2)
        tail = self.log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{self.label} did not become ready; its log ends:\n{tail}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


# Our server's variants: the defaults (label "mlp"), and tuned by hand with batching as it comes,
# with a queue delay, or off.
MLP_VARIANTS = ("mlp", "mlp-tuned", "mlp-delay", "mlp-nobatch")


def mlp_server(
    repo: Path, provider: str, label: str, logs: Path, queue_delay_ms: float = 0.0
) -> Server:
    """``mlp serve`` as ``label`` says: ``mlp``, the defaults (only the ports, and the
    provider when not the CPU); the others tuned by hand as the best settings were found."""
    http_port, grpc_port = free_port(), free_port()
    command = [str(MLP), "serve", str(repo), "--http-port", str(http_port)]
    command += ["--grpc-port", str(grpc_port), "--drain-seconds", "2"]
    if provider != CPU:
        command += ["--set", f"providers=[{','.join(providers_for(provider))}]"]
    if label != "mlp":
        batching = label != "mlp-nobatch"
        delay = queue_delay_ms if label == "mlp-delay" else 0.0
        command += [
            "--log-level",
            "WARNING",  # nothing logged per request, whatever the defaults do
            "--set",
            "intra_op_threads=1",
            "--set",
            "inter_op_threads=1",
            "--set",
            f"batching.enabled={str(batching).lower()}",
            "--set",
            f"batching.max_queue_delay_ms={delay}",
        ]
    return Server(
        label,
        command,
        "/v2/health/ready",
        http_port,
        grpc_port,
        logs / f"{label}.log",
    )


def plain_server(repo: Path, provider: str, logs: Path) -> Server:
    port = free_port()
    script = HERE / "plain_fastapi_server.py"
    command = [str(SERVE_PYTHON), str(script), str(repo), "--port", str(port)]
    return Server(
        "fastapi",
        [*command, "--provider", provider, "--threads", "1"],
        "/health",
        port,
        None,
        logs / "fastapi.log",
    )


def competent_server(repo: Path, provider: str, logs: Path) -> Server:
    port = free_port()
    script = HERE / "competent_fastapi_server.py"
    command = [str(SERVE_PYTHON), str(script), str(repo), "--port", str(port)]
    return Server(
        "competent",
        [*command, "--provider", provider, "--threads", "1"],
        "/v2/health/ready",
        port,
        None,
        logs / "competent.log",
    )


# gRPC-only baselines (competent_grpc_server.py): grpcio + onnxruntime written as a capable user
# would, and the same server answering nothing, grpc's own floor.
GRPC_BASELINES = ("competent-grpc", "grpc-floor")


def competent_grpc_server(repo: Path, provider: str, label: str, logs: Path) -> Server:
    port = free_port()
    script = HERE / "competent_grpc_server.py"
    command = [str(SERVE_PYTHON), str(script), str(repo), "--port", str(port)]
    command += ["--provider", provider, "--threads", "1"]
    if label == "grpc-floor":
        command.append("--do-nothing")
    return Server(label, command, None, None, port, logs / f"{label}.log")


def grpc_ready(port: int) -> bool:
    """Whether a server on ``port`` answers a gRPC call (any status but UNAVAILABLE)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            channel.unary_unary("/inference.GRPCInferenceService/ServerLive")(b"", timeout=2)
        except grpc.RpcError as exc:
            return exc.code() != grpc.StatusCode.UNAVAILABLE
    return True


def kserve_server(venv: Path, repo: Path, provider: str, logs: Path) -> Server:
    http_port, grpc_port = free_port(), free_port()
    return Server(
        "kserve",
        [
            str(venv / "bin" / "python"),
            str(HERE / "kserve_onnx_server.py"),
            str(repo),
            "--http_port",
            str(http_port),
            "--grpc_port",
            str(grpc_port),
            "--workers",
            "1",
            "--configure_logging",
            "false",  # no access line per request, as for the other servers
            "--enable_latency_logging",
            "false",
            "--provider",
            provider,
            "--threads",
            "1",
        ],
        "/v2/health/ready",
        http_port,
        grpc_port,
        logs / "kserve.log",
    )


def ensure_kserve_venv(venv: Path, provider: str) -> str | None:
    """Create KServe's environment if missing; None when ready, else why it is not."""
    python = venv / "bin" / "python"
    if python.exists():
        check = subprocess.run(
            [str(python), "-c", "import kserve, onnxruntime, numpy"], capture_output=True
        )
        if check.returncode == 0:
            return None
    runtime = "onnxruntime" if provider == CPU else "onnxruntime-gpu"
    print(f"creating {venv} (kserve, {runtime}, numpy) ...", flush=True)
    steps = [
        ["uv", "venv", str(venv), "--python", "3.11"],
        ["uv", "pip", "install", "--python", str(python), "kserve", runtime, "numpy"],
    ]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True)
        except OSError as exc:
            return f"{' '.join(step)}: {exc}"
        if done.returncode != 0:
            return f"{' '.join(step)} failed:\n{done.stderr[-2000:]}"
    return None


# -- clients -----------------------------------------------------------------------------------

Call = Callable[[], None]


def http_get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def v2_json_body(spec: ModelSpec, row: np.ndarray) -> bytes:
    tensor = {"name": "x", "datatype": "FP32", "shape": [1, spec.features], "data": row.tolist()}
    return json.dumps({"inputs": [tensor]}).encode()


def grpc_body(spec: ModelSpec, row: np.ndarray) -> bytes:
    request = service_pb2.ModelInferRequest(model_name=spec.name)
    request.inputs.add(name="x", datatype="FP32", shape=[1, spec.features])
    request.raw_input_contents.append(row.astype("<f4").tobytes())
    return request.SerializeToString()


def rest_caller(port: int, path: str, body: bytes) -> Callable[[], Call]:
    """A factory of REST calls: each call of the factory opens one keep-alive connection."""
    headers = {"Content-Type": "application/json"}

    def connect() -> Call:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        return lambda: call_once(conn, path, body, headers)

    return connect


def call_once(conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict) -> bytes:
    conn.request("POST", path, body, headers)
    response = conn.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {data[:300]!r}")
    return data


def grpc_caller(port: int, body: bytes) -> tuple[Callable[[], Call], Callable[[], None]]:
    """A factory of gRPC calls on one shared channel, and the channel's closer."""
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = channel.unary_unary(MODEL_INFER)  # no serializers: bytes in, bytes out

    def connect() -> Call:
        def call() -> None:
            stub(body, timeout=30)

        return call

    return connect, channel.close


def decode_v2_json(data: bytes) -> np.ndarray:
    return np.asarray(json.loads(data)["outputs"][0]["data"], dtype=np.float32)


def decode_plain_json(data: bytes) -> np.ndarray:
    return np.asarray(json.loads(data)["outputs"], dtype=np.float32).ravel()


def decode_grpc(data: bytes) -> np.ndarray:
    response = service_pb2.ModelInferResponse.FromString(data)
    if response.raw_output_contents:
        return np.frombuffer(response.raw_output_contents[0], dtype="<f4")
    return np.asarray(response.outputs[0].contents.fp32_contents, dtype=np.float32)


# -- the load loop -----------------------------------------------------------------------------


@dataclass
class CellResult:
    requests: int
    seconds: float
    latencies: list[float]
    errors: int
    client_cpu: float  # the load generator's CPU seconds over the wall seconds
    server_cpu: float = float("nan")  # the server process's, likewise (>100%: several cores)
    percentiles: dict[float, float] | None = None  # seconds, when only these are known (wrk)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if self.percentiles is not None and q in self.percentiles:
            return self.percentiles[q] * 1000
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")


def run_cell(
    connect: Callable[[], Call], concurrency: int, requests: int, seconds: float, warmup: int
) -> CellResult:
    """``requests`` calls (or as many as fit in ``seconds``) from ``concurrency`` threads."""
    counter = itertools.count()
    clock: dict[str, float] = {}

    def go() -> None:  # runs once, when every thread has warmed up
        clock["cpu"] = time.process_time()
        clock["start"] = time.perf_counter()
        clock["deadline"] = clock["start"] + seconds

    barrier = threading.Barrier(concurrency, action=go)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency

    def worker(index: int) -> None:
        call = connect()
        for _ in range(warmup):
            call()
        barrier.wait()
        mine, deadline, clock_ = latencies[index], clock["deadline"], time.perf_counter
        while next(counter) < requests:
            started = clock_()
            try:
                call()
            except Exception:
                errors[index] += 1
                continue
            ended = clock_()
            mine.append(ended - started)
            if ended > deadline:
                break

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - clock["start"]
    cpu = time.process_time() - clock["cpu"]
    flat = [x for part in latencies for x in part]
    return CellResult(len(flat), wall, flat, sum(errors), cpu / wall if wall else 0.0)


# -- the benchmark -----------------------------------------------------------------------------


@dataclass
class Target:
    """One thing to load: a model behind a server and protocol (or in-process)."""

    model: str
    server: str  # inproc, one of MLP_VARIANTS, competent, GRPC_BASELINES, fastapi, kserve
    protocol: str  # -, rest, grpc
    connect: Callable[[], Call]
    h2load: h2load_client.Request | None = None  # the same request, for h2load (servers only)
    results: dict[int, list[CellResult]] = field(default_factory=dict)
    queue_delay_ms: float = 0.0
    pid: int | None = None  # the server process, whose CPU time each cell reads

    @property
    def batching(self) -> str:
        if self.server == "mlp-delay":
            return f"on {self.queue_delay_ms:g}ms"
        return "on" if self.server in ("mlp", "mlp-tuned") else "off"

    @property
    def key(self) -> tuple[str, str, str]:
        return self.model, self.server, self.protocol


def make_targets(
    specs: tuple[ModelSpec, ...],
    repo: Path,
    provider: str,
    servers: dict[str, Server],
    closers: list[Callable[[], None]],
    queue_delay_ms: float,
) -> list[Target]:
    rng = np.random.default_rng(1)
    targets = []
    for spec in specs:
        row = rng.normal(size=(1, spec.features)).astype(np.float32)
        session = ort_session(repo / spec.name / "1" / "model.onnx", provider)
        expected = session.run(None, {"x": row})[0].ravel()

        def matches(
            decode: Callable[[bytes], np.ndarray], what: str, expected=expected
        ) -> Callable:
            def compare(data: bytes) -> None:
                got = decode(data)
                if not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
                    raise RuntimeError(f"{what}: wrong answer {got[:4]} != {expected[:4]}")

            return compare

        def inproc(session=session, row=row) -> Call:
            return lambda: session.run(None, {"x": row})

        targets.append(Target(spec.name, "inproc", "-", inproc))
        v2_body, g_body = v2_json_body(spec, row), grpc_body(spec, row)
        for label, server in servers.items():
            assert server.process is not None
            pid = server.process.pid
            if label in GRPC_BASELINES:
                assert server.grpc_port is not None
                connect, close = grpc_caller(server.grpc_port, g_body)
                closers.append(close)
                # The floor answers an empty response: its calls are counted, not checked.
                check = (lambda _: None) if label == "grpc-floor" else matches(decode_grpc, label)
                answer = verify_grpc(server.grpc_port, g_body, check)
                url = f"http://127.0.0.1:{server.grpc_port}{MODEL_INFER}"
                h2 = h2load_client.grpc_request(url, g_body, answer)
                targets.append(Target(spec.name, label, "grpc", connect, h2, pid=pid))
                continue
            assert server.http_port is not None
            if label == "fastapi":
                body = json.dumps({"inputs": row.tolist()}).encode()
                path = f"/models/{spec.name}/predict"
                check = matches(decode_plain_json, f"{label} {spec.name}")
                verify_rest(server.http_port, path, body, check)
                connect = rest_caller(server.http_port, path, body)
                h2 = h2load_client.rest_request(f"http://127.0.0.1:{server.http_port}{path}", body)
                targets.append(Target(spec.name, label, "rest", connect, h2, pid=pid))
                continue
            delay = queue_delay_ms if label == "mlp-delay" else 0.0
            path = f"/v2/models/{spec.name}/infer"
            check = matches(decode_v2_json, f"{label} REST {spec.name}")
            verify_rest(server.http_port, path, v2_body, check)
            connect = rest_caller(server.http_port, path, v2_body)
            url = f"http://127.0.0.1:{server.http_port}{path}"
            h2 = h2load_client.rest_request(url, v2_body)
            targets.append(
                Target(spec.name, label, "rest", connect, h2, queue_delay_ms=delay, pid=pid)
            )
            if server.grpc_port is not None:
                connect, close = grpc_caller(server.grpc_port, g_body)
                closers.append(close)
                check = matches(decode_grpc, f"{label} gRPC")
                answer = verify_grpc(server.grpc_port, g_body, check)
                url = f"http://127.0.0.1:{server.grpc_port}{MODEL_INFER}"
                h2 = h2load_client.grpc_request(url, g_body, answer)
                targets.append(
                    Target(spec.name, label, "grpc", connect, h2, queue_delay_ms=delay, pid=pid)
                )
    return targets


def verify_rest(port: int, path: str, body: bytes, check: Callable[[bytes], None]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        check(call_once(conn, path, body, {"Content-Type": "application/json"}))
    finally:
        conn.close()


def verify_grpc(port: int, body: bytes, check: Callable[[bytes], None]) -> bytes:
    """The server's (checked) answer to ``body``."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = channel.unary_unary(MODEL_INFER)(body, timeout=30)
    check(answer)
    return answer


def run_rounds(targets: list[Target], args: argparse.Namespace) -> None:
    cells = [(t, c) for t in targets for c in args.concurrency]
    for round_ in range(args.rounds):
        # Rotate the order each round, so no cell always runs first or right after another.
        shift = (round_ * len(cells)) // max(args.rounds, 1)
        order = cells[shift:] + cells[:shift]
        started = time.perf_counter()
        for target, concurrency in order:
            server_cpu = process_cpu(target.pid)
            started_cell = time.perf_counter()
            result = measure_cell(target, concurrency, args)
            wall = time.perf_counter() - started_cell
            if target.pid is not None:
                result.server_cpu = (process_cpu(target.pid) - server_cpu) / wall
            target.results.setdefault(concurrency, []).append(result)
        print(
            f"round {round_ + 1}/{args.rounds}: {len(order)} cells in "
            f"{time.perf_counter() - started:.0f} s",
            flush=True,
        )


def measure_cell(target: Target, concurrency: int, args: argparse.Namespace) -> CellResult:
    request = target.h2load
    if args.load != "python" and request is not None:
        use_wrk = request.http1 and args.rest_load == "wrk"
        client = wrk_client if use_wrk else h2load_client
        measured = client.run(request, concurrency, args.seconds, args.warmup)
        return CellResult(
            measured.requests,
            measured.seconds,
            measured.latencies,
            measured.errors,
            measured.client_cpu,
            percentiles=measured.percentiles,
        )
    return run_cell(
        target.connect,
        concurrency,
        args.requests,
        args.seconds,
        warmup=max(3, args.warmup // concurrency),
    )


_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int | None) -> float:
    """User + system CPU seconds of ``pid`` (all its threads) so far; 0 for None."""
    if pid is None:
        return 0.0
    # Fields after the command name, which is in parentheses and may hold spaces.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


@dataclass(frozen=True)
class Summary:
    rps: float
    p50: float
    p99: float
    errors: int
    client_cpu: float
    server_cpu: float
    # Requests per CPU-second of the server process: what its core would do if it had it all.
    # Steadier than req/s when other work shares the machine, and it shows a server that
    # spreads onto other cores (server cpu > 100%) for what it is.
    per_cpu_second: float


def summarize(results: list[CellResult]) -> Summary:
    return Summary(
        statistics.median(r.rps for r in results),
        statistics.median(r.percentile(50) for r in results),
        statistics.median(r.percentile(99) for r in results),
        sum(r.errors for r in results),
        statistics.median(r.client_cpu for r in results),
        statistics.median(r.server_cpu for r in results),
        statistics.median(r.rps / r.server_cpu if r.server_cpu else float("nan") for r in results),
    )


def print_table(targets: list[Target], concurrency: list[int]) -> dict:
    header = (
        f"{'model':<10} {'server':<12} {'protocol':<8} {'batching':<8} {'conc':>4} "
        f"{'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'server cpu':>10} {'req/cpu-s':>9} "
        f"{'client cpu':>10} {'errors':>6}"
    )
    print(header)
    print("-" * len(header))
    table = {}
    for target in targets:
        for c in concurrency:
            s = summarize(target.results[c])
            table[(*target.key, c)] = s
            print(
                f"{target.model:<10} {target.server:<12} {target.protocol:<8} "
                f"{target.batching:<8} {c:>4} {s.rps:>8.0f} {s.p50:>8.3f} {s.p99:>8.3f} "
                f"{_share(s.server_cpu):>10} {_count(s.per_cpu_second):>9} "
                f"{_share(s.client_cpu):>10} {s.errors:>6}"
            )
    return table


def _share(value: float) -> str:
    return "-" if value != value else f"{value:.0%}"  # NaN: not measured


def _count(value: float) -> str:
    return "-" if value != value else f"{value:.0f}"


def ratio_line(table: dict, key: tuple, base_key: tuple, goal: str, at_least: float) -> str | None:
    """``key`` over ``base_key`` in req/s and in req per server CPU-second, the goal met or
    missed on each; None if either cell is absent. ``goal`` "above" means strictly more."""
    ours, base = table.get(key), table.get(base_key)
    if ours is None or base is None or not base.rps:
        return None

    def verdict(ratio: float) -> str:
        if ratio != ratio:
            return "-"
        met = ratio > at_least if goal == "above" else ratio >= at_least
        return f"{ratio:5.2f}x {'met' if met else 'MISSED'}"

    per_cpu = ours.per_cpu_second / base.per_cpu_second if base.per_cpu_second else float("nan")
    return (
        f"{key[0]:<10} c={key[3]:<3} {key[1]} {key[2]:<5} / {base_key[1]} {base_key[2]:<5} "
        f"(goal {goal}): req/s {ours.rps:>6.0f} / {base.rps:>6.0f} "
        f"= {verdict(ours.rps / base.rps)};  per server CPU-s {verdict(per_cpu)}"
    )


def print_goals(table: dict, specs: tuple[ModelSpec, ...], levels: list[int]) -> None:
    """The issue's goals for the defaults (``mlp``): near tuned, against the competent FastAPI
    server and KServe; then each server's added p50 over in-process onnxruntime."""
    print()
    print("Goals for mlp serve's defaults (mlp)")
    for spec in specs:
        m = spec.name
        for c in levels:
            lines = []
            for proto in ("rest", "grpc"):
                ours = (m, "mlp", proto, c)
                # The best hand-tuned variant measured, for this protocol and concurrency.
                tuned = [(m, v, proto, c) for v in MLP_VARIANTS[1:] if (m, v, proto, c) in table]
                if tuned:
                    best = max(tuned, key=lambda k: table[k].rps)
                    lines.append(ratio_line(table, ours, best, ">= 0.9x", 0.9))
                lines.append(ratio_line(table, ours, (m, "kserve", proto, c), "above", 1.0))
            competent = (m, "competent", "rest", c)
            if c == max(levels):
                lines.append(ratio_line(table, (m, "mlp", "rest", c), competent, ">= 1.0x", 1.0))
                lines.append(ratio_line(table, (m, "mlp", "grpc", c), competent, ">= 1.5x", 1.5))
                # Context for that goal, not a goal: what grpcio allows at all, doing nothing.
                floor, base = table.get((m, "grpc-floor", "grpc", c)), table.get(competent)
                if floor is not None and base is not None and base.rps:
                    lines.append(
                        f"{m:<10} c={c:<3} (context) grpc-floor grpc / competent rest: req/s "
                        f"{floor.rps:>6.0f} / {base.rps:>6.0f} = {floor.rps / base.rps:.2f}x, "
                        "the most any servicer on grpcio reaches"
                    )
            # The same protocol's competent baseline (DEVELOPERS.md: compare against the
            # strongest version a capable user would write).
            same = (m, "competent-grpc", "grpc", c)
            lines.append(ratio_line(table, (m, "mlp", "grpc", c), same, ">= 1.0x", 1.0))
            for line in lines:
                if line is not None:
                    print(line)
    low = min(levels)
    print()
    print(f"Added p50 latency over in-process onnxruntime (concurrency {low})")
    servers = (*MLP_VARIANTS, "competent", *GRPC_BASELINES, "fastapi", "kserve")
    for spec in specs:
        base = table.get((spec.name, "inproc", "-", low))
        if base is None:
            continue
        cells = [
            f"{server} {proto} +{table[k].p50 - base.p50:.3f} ms"
            for server in servers
            for proto in ("rest", "grpc")
            if (k := (spec.name, server, proto, low)) in table
        ]
        print(f"{spec.name:<10} in-process p50 {base.p50:.3f} ms;  " + ";  ".join(cells))


def pin(core: int | None) -> None:
    if core is not None:
        os.sched_setaffinity(0, {core})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a one-minute smoke run")
    parser.add_argument("--provider", default=CPU, help="onnxruntime execution provider")
    parser.add_argument("--rounds", type=int, default=5, help="rounds over every cell")
    parser.add_argument(
        "--load",
        choices=["auto", "h2load", "python"],
        default="auto",
        help="load generator for the servers: h2load (C; auto when installed; REST through "
        "--rest-load) or Python threads",
    )
    parser.add_argument(
        "--rest-load",
        choices=["wrk", "h2load"],
        default="wrk" if wrk_client.find() else "h2load",
        help="REST's load generator with --load h2load (default wrk when installed)",
    )
    parser.add_argument(
        "--servers",
        nargs="+",
        choices=[*MLP_VARIANTS, "competent", *GRPC_BASELINES, "fastapi", "kserve"],
        default=["mlp", "mlp-tuned", "competent", *GRPC_BASELINES, "kserve"],
        help="servers to compare (mlp: the defaults; mlp-tuned/-delay/-nobatch: tuned by hand; "
        "competent/fastapi: FastAPI written well/naively; competent-grpc: grpcio written well; "
        "grpc-floor: grpcio answering nothing; kserve)",
    )
    parser.add_argument(
        "--queue-delay-ms",
        type=float,
        default=1.0,
        help="max_queue_delay_ms of our server's third variant (mlp-delay)",
    )
    parser.add_argument(
        "--requests", type=int, default=1000, help="requests per cell (Python load only)"
    )
    parser.add_argument("--seconds", type=float, default=1.0, help="time bound of one cell")
    parser.add_argument("--warmup", type=int, default=48, help="warm-up requests per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--client-core", type=int, default=1)
    parser.add_argument("--no-pin", action="store_true", help="leave processes unpinned")
    parser.add_argument("--no-kserve", action="store_true", help="leave KServe out (--servers)")
    parser.add_argument("--kserve-venv", type=Path, default=KSERVE_VENV)
    parser.add_argument("--json", type=Path, help="also write the table here")
    parser.add_argument(
        "--autogroup-nice",
        type=int,
        help="on a machine others load: this session's scheduler autogroup nice (-20..19; root "
        "for < 0) while measuring, restored after. Linux gives each session (each terminal, each "
        "job started with setsid) an equal CPU share whatever the processes' own nice values",
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.requests, args.seconds, args.warmup = 1, 300, 0.5, 16
    if args.load == "auto":
        args.load = "h2load" if h2load_client.find() else "python"
    cores = len(os.sched_getaffinity(0))
    pinned = not args.no_pin and cores >= 2
    server_core = args.server_core if pinned else None
    client_core = args.client_core if pinned else None
    if args.provider not in ort.get_available_providers():
        sys.exit(f"{args.provider} is not available here: {ort.get_available_providers()}")

    if args.no_kserve and "kserve" in args.servers:
        args.servers.remove("kserve")
    kserve_problem = None if "kserve" in args.servers else "left out"
    if kserve_problem is None:
        kserve_problem = ensure_kserve_venv(args.kserve_venv, args.provider)
    pin(client_core)
    print(
        f"provider {args.provider}; servers on core {server_core}, client on core {client_core} "
        f"(of {os.cpu_count()}); onnxruntime {ort.__version__}; {args.rounds} round(s), "
        f"{args.requests} requests or {args.seconds} s per cell",
        flush=True,
    )
    load = (
        f"{args.rest_load} (REST) and h2load (gRPC)"
        if args.load == "h2load"
        else "Python threads in this process"
    )
    print(f"load generator for the servers: {load}; in-process cells: Python", flush=True)
    for spec in MODELS:
        print(f"  {spec.name}: {spec.layers} ({spec.parameters:,} parameters)")

    with (
        autogroup_nice(args.autogroup_nice),
        tempfile.TemporaryDirectory(prefix="bench-serve-") as folder,
    ):
        repo, logs = Path(folder) / "repo", Path(folder) / "logs"
        logs.mkdir()
        write_repository(repo)
        servers = {
            label: mlp_server(repo, args.provider, label, logs, args.queue_delay_ms)
            for label in MLP_VARIANTS
            if label in args.servers
        }
        if "competent" in args.servers:
            servers["competent"] = competent_server(repo, args.provider, logs)
        for label in GRPC_BASELINES:
            if label in args.servers:
                servers[label] = competent_grpc_server(repo, args.provider, label, logs)
        if "fastapi" in args.servers:
            servers["fastapi"] = plain_server(repo, args.provider, logs)
        if kserve_problem is None:
            servers["kserve"] = kserve_server(args.kserve_venv, repo, args.provider, logs)
        else:
            print(f"KServe: not benchmarked: {kserve_problem}")
        closers: list[Callable[[], None]] = []
        try:
            for server in servers.values():
                server.start(server_core)
            for server in servers.values():
                server.wait_ready()
            ours = next((servers[v] for v in MLP_VARIANTS if v in servers), None)
            if ours is not None:
                report_providers(ours)
            targets = make_targets(
                MODELS, repo, args.provider, servers, closers, args.queue_delay_ms
            )
            started = time.perf_counter()
            run_rounds(targets, args)
            print(f"measured in {time.perf_counter() - started:.0f} s\n")
        finally:
            for close in closers:
                close()
            for server in servers.values():
                server.stop()
    table = print_table(targets, args.concurrency)
    print_goals(table, MODELS, sorted(args.concurrency))
    if args.json:
        rows = [
            {"model": k[0], "server": k[1], "protocol": k[2], "concurrency": k[3], **vars(s)}
            for k, s in table.items()
        ]
        args.json.write_text(json.dumps(rows, indent=1))


@contextlib.contextmanager
def autogroup_nice(value: int | None) -> Iterator[None]:
    """This session's autogroup nice set to ``value`` for the block (servers started inside
    inherit the session), then put back."""
    path = Path("/proc/self/autogroup")
    if value is None or not path.exists():
        yield
        return
    before = path.read_text().split()[-1]  # "/autogroup-158 nice 0"
    path.write_text(str(value))
    print(f"scheduler autogroup nice {value} while measuring (was {before})", flush=True)
    try:
        yield
    finally:
        path.write_text(before)


def report_providers(server: Server) -> None:
    """The provider our server really runs each model on (onnxruntime may fall back to CPU)."""
    for spec in MODELS:
        status, body = http_get(server.http_port, f"/v2/models/{spec.name}")
        if status == 200:
            provider = json.loads(body)["parameters"].get("execution_provider")
            print(f"  mlp serve runs {spec.name} on {provider}")


if __name__ == "__main__":
    main()
