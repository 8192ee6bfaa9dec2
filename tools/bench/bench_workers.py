"""`mlp serve --workers N`: throughput against the number of workers, requests per server
CPU-second against the competent FastAPI server run with the same number of uvicorn workers,
and one worker's CPU per gRPC request against grpc's do-nothing floor.

    .venvs/serve/bin/python tools/bench/bench_workers.py             # about 2 minutes
    .venvs/serve/bin/python tools/bench/bench_workers.py --quick     # about 40 seconds
    .venvs/serve/bin/python tools/bench/bench_workers.py --workers 1 2 4 8 --seconds 5

- Model: ``mlp_small``, a seeded 16-128-64-3 MLP (10,627 parameters), FP32 ``[-1, 16] ->
  [-1, 3]``, one row per request; written as a bare repository.
- Servers, each a subprocess: ``mlp serve --workers N`` with its defaults apart from the log
  level (WARNING: nothing per request) and the CPU provider; the competent FastAPI + onnxruntime
  server (``competent_fastapi_server.py``: async endpoint, orjson, one onnxruntime thread) under
  ``uvicorn --workers N``; and for the floor a grpc server (grpc's synchronous server, as ours)
  whose ``ModelInfer`` handler returns an empty message without reading the request.
- Load: h2load (``h2load_client.py``), ``--connections`` connections (default 16) with one
  request in flight on each: HTTP/1.1 keep-alive for REST, one HTTP/2 connection per client for
  gRPC. Several connections, not one, because the kernel spreads connections (not requests)
  across the workers.
- Measured per cell: requests/s; the server's CPU seconds (every process of it: supervisor and
  workers, or uvicorn's parent and workers) per request; requests per server CPU-second. Cells
  run in ``--rounds`` rounds (rotated order), medians printed.

Not a test: it prints numbers. On a machine with fewer cores than workers + load generator,
the throughput column shows the machine, not the server: requests per server CPU-second is the
figure that stays meaningful there.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import h2load_client  # beside this script, which Python puts first on sys.path
import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
MLP = Path(sys.executable).parent / "mlp"
MODEL = "mlp_small"
LAYERS = (16, 128, 64, 3)
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
STARTUP = re.compile(rb"mlp serve: REST on http://\S+")


# -- the model ---------------------------------------------------------------------------------


def write_repository(root: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, previous = [], [], "x"
    for i, (a, b) in enumerate(itertools.pairwise(LAYERS)):
        w = (rng.normal(size=(a, b)) / np.sqrt(a)).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"w{i}"),
            numpy_helper.from_array(np.zeros(b, np.float32), f"b{i}"),
        ]
        nodes += [helper.make_node("MatMul", [previous, f"w{i}"], [f"m{i}"])]
        last = i == len(LAYERS) - 2
        nodes += [helper.make_node("Add", [f"m{i}", f"b{i}"], ["y" if last else f"a{i}"])]
        if not last:
            nodes += [helper.make_node("Relu", [f"a{i}"], [f"h{i}"])]
            previous = f"h{i}"
    graph = helper.make_graph(
        nodes,
        MODEL,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", LAYERS[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", LAYERS[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder = root / MODEL / "1"
    folder.mkdir(parents=True)
    onnx.save(model, folder / "model.onnx")


def rest_body(row: np.ndarray) -> bytes:
    import json

    tensor = {"name": "x", "datatype": "FP32", "shape": [1, row.size], "data": row.tolist()}
    return json.dumps({"inputs": [tensor]}).encode()


def grpc_message(row: np.ndarray) -> bytes:
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="x", datatype="FP32", shape=[1, row.size])
    request.raw_input_contents.append(row.astype(np.float32).tobytes())
    return request.SerializeToString()


# -- servers -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    label: str
    workers: int
    command: list[str]
    http_port: int | None
    grpc_port: int | None
    env: dict[str, str] | None = None
    process: subprocess.Popen | None = None
    sockets: list[socket.socket] = field(default_factory=list)  # handed to the server by fd

    def start(self, log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                self.command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=HERE,
                pass_fds=[s.fileno() for s in self.sockets],
            )

    def wait_ready(self, ready: Callable[[], bool], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        assert self.process is not None
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if ready():
                    return
            except OSError:
                pass
            time.sleep(0.2)
        tail = self.log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{self.label} did not become ready; its log ends:\n{tail}")

    def cpu_seconds(self) -> float:
        """User + system CPU of the server's whole process tree so far."""
        assert self.process is not None
        root = psutil.Process(self.process.pid)
        total = 0.0
        for process in [root, *root.children(recursive=True)]:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            for child in psutil.Process(self.process.pid).children(recursive=True):
                child.kill()
            self.process.kill()
            self.process.wait(5)


def mlp_server(repo: Path, workers: int) -> Server:
    http_port, grpc_port = free_port(), free_port()
    command = [str(MLP), "serve", str(repo), "--http-port", str(http_port)]
    command += ["--grpc-port", str(grpc_port), "--workers", str(workers), "--drain-seconds", "2"]
    command += ["--log-level", "WARNING", "--set", "providers=[CPUExecutionProvider]"]
    command += ["--set", "poll_seconds=null"]
    return Server(f"mlp x{workers}", workers, command, http_port, grpc_port)


def competent_server(repo: Path, workers: int) -> Server:
    # uvicorn --workers binds its socket with protocol 0, so asyncio never sets TCP_NODELAY on
    # the connections and each response waits for the client's delayed ACK (about 40 ms: 21
    # requests/s on one connection with uvicorn 0.54). A user would hit that; the comparison here
    # is about CPU, so uvicorn gets a listening socket with TCP_NODELAY (inherited by accepted
    # sockets on Linux) through --fd.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    command = [sys.executable, "-m", "uvicorn", "bench_workers:competent_app", "--factory"]
    command += ["--app-dir", str(HERE), "--fd", str(sock.fileno()), "--workers", str(workers)]
    command += ["--no-access-log", "--http", "httptools", "--log-level", "warning"]
    env = {**os.environ, "BENCH_WORKERS_REPO": str(repo)}
    server = Server(f"fastapi x{workers}", workers, command, sock.getsockname()[1], None, env)
    server.sockets = [sock]
    return server


def competent_app():
    """uvicorn --workers needs an import string: the competent server's app, for its workers."""
    from competent_fastapi_server import create_app

    return create_app(Path(os.environ["BENCH_WORKERS_REPO"]), "CPUExecutionProvider", 1)


def floor_server() -> Server:
    port = free_port()
    command = [sys.executable, str(Path(__file__).resolve()), "--floor-server", str(port)]
    return Server("grpc floor", 1, command, None, port)


def run_floor_server(port: int) -> None:
    """grpc's synchronous server, 32 threads as ours, answering ModelInfer with nothing."""
    import grpc

    def nothing(request: bytes, context: grpc.ServicerContext) -> bytes:
        return b""

    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {"ModelInfer": grpc.unary_unary_rpc_method_handler(nothing)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(32), handlers=[handler])
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    signal.signal(signal.SIGTERM, lambda *_: server.stop(0))
    server.wait_for_termination()


def http_ready(port: int, path: str) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    finally:
        connection.close()


def announced(server: Server) -> bool:
    return STARTUP.search(server.log.read_bytes()) is not None


def grpc_ready(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


# -- load --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    server: str
    protocol: str
    workers: int
    rps: float
    cpu_per_request: float  # server CPU seconds
    errors: int

    @property
    def per_cpu_second(self) -> float:
        return 1.0 / self.cpu_per_request if self.cpu_per_request else 0.0


def measure(
    server: Server, request: h2load_client.Request, connections: int, seconds: float
) -> tuple[float, float, int]:
    """(requests/s, server CPU seconds per request, errors) of one timed h2load run."""
    h2load = h2load_client.find()
    assert h2load is not None
    with tempfile.TemporaryDirectory(prefix="h2load-") as folder:
        body = Path(folder) / "body"
        body.write_bytes(request.body)
        command = [h2load, "-c", str(connections), "-m", "1", "-d", str(body)]
        if request.http1:
            command.insert(1, "--h1")
        for header in request.headers:
            command += ["-H", header]
        h2load_client._h2load([*command, "-n", str(connections * 50), request.url])  # warm-up
        cpu = server.cpu_seconds()
        output = h2load_client._h2load([*command, "-D", f"{round(seconds * 1000)}ms", request.url])
        cpu = server.cpu_seconds() - cpu
    done, succeeded = h2load_client._requests(output)
    errors = done - succeeded
    if request.grpc_answer_bytes is not None:
        errors = max(errors, done - h2load_client._data_bytes(output) // request.grpc_answer_bytes)
    seconds_taken = h2load_client._duration(output)
    return done / seconds_taken, cpu / max(done, 1), errors


def check_answers(rest_port: int | None, row: np.ndarray, path: str) -> None:
    """Every server's REST answer is the model's before anything is timed."""
    if rest_port is None:
        return
    import json

    connection = http.client.HTTPConnection("127.0.0.1", rest_port, timeout=10)
    connection.request(
        "POST", path, body=rest_body(row), headers={"content-type": "application/json"}
    )
    response = connection.getresponse()
    data = json.loads(response.read())
    connection.close()
    assert response.status == 200 and len(data["outputs"][0]["data"]) == LAYERS[-1], data


def grpc_answer_size(port: int, message: bytes) -> bytes:
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return channel.unary_unary(MODEL_INFER)(message, timeout=10)


# -- main --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", help="default: 1, 2 and the CPU count")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s")
    parser.add_argument("--floor-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor_server:
        run_floor_server(args.floor_server)
        return
    if args.quick:
        args.rounds, args.seconds = 1, 1.0
    if h2load_client.find() is None:
        sys.exit("h2load is not installed (Debian: apt-get install nghttp2-client)")
    cpus = len(os.sched_getaffinity(0))
    counts = args.workers or sorted({1, 2, cpus})
    row = np.random.default_rng(1).normal(size=LAYERS[0]).astype(np.float32)
    message = grpc_message(row)
    results: dict[tuple[str, str, int], list[tuple[float, float, int]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as folder:
        root = Path(folder)
        repo = root / "repo"
        write_repository(repo)
        servers = [mlp_server(repo, n) for n in counts] + [
            competent_server(repo, n) for n in counts
        ]
        servers.append(floor_server())
        print(
            f"{cpus} CPUs; {args.connections} connections; {args.rounds} rounds of {args.seconds} s",
            flush=True,
        )
        for round_index in range(args.rounds):
            order = servers[round_index % len(servers) :] + servers[: round_index % len(servers)]
            for server in order:
                server.start(root / f"{server.label.replace(' ', '_')}.log")
                try:
                    if server.label.startswith("mlp"):
                        server.wait_ready(lambda s=server: announced(s))
                    elif server.http_port is not None:
                        server.wait_ready(
                            lambda s=server: http_ready(s.http_port, "/v2/health/ready")
                        )
                        time.sleep(
                            1.0 + 0.5 * server.workers
                        )  # uvicorn's workers start after the first
                    else:
                        server.wait_ready(lambda s=server: grpc_ready(s.grpc_port))
                    cells = []
                    if server.http_port is not None:
                        path = f"/v2/models/{MODEL}/infer"
                        check_answers(server.http_port, row, path)
                        url = f"http://127.0.0.1:{server.http_port}{path}"
                        cells.append(("rest", h2load_client.rest_request(url, rest_body(row))))
                    if server.grpc_port is not None:
                        answer = grpc_answer_size(server.grpc_port, message)
                        url = f"http://127.0.0.1:{server.grpc_port}{MODEL_INFER}"
                        cells.append(("grpc", h2load_client.grpc_request(url, message, answer)))
                    for protocol, request in cells:
                        key = (server.label.split()[0], protocol, server.workers)
                        measured = measure(server, request, args.connections, args.seconds)
                        results.setdefault(key, []).append(measured)
                        rps, cpu, errors = measured
                        print(
                            f"  round {round_index + 1}: {server.label} {protocol}: {rps:.0f} "
                            f"req/s, {cpu * 1e6:.0f} us CPU/req, {errors} errors",
                            flush=True,
                        )
                finally:
                    server.stop()
    report(results, counts, cpus)


def report(
    results: dict[tuple[str, str, int], list[tuple[float, float, int]]],
    counts: list[int],
    cpus: int,
) -> None:
    cells = {
        key: Cell(
            key[0],
            key[1],
            key[2],
            statistics.median(r[0] for r in runs),
            statistics.median(r[1] for r in runs),
            sum(r[2] for r in runs),
        )
        for key, runs in results.items()
    }
    print()
    print(
        f"{'server':10} {'protocol':8} {'workers':>7} {'req/s':>8} {'cpu us/req':>10} {'req/cpu-s':>9} {'errors':>6}"
    )
    print("-" * 64)
    for cell in sorted(cells.values(), key=lambda c: (c.server, c.protocol, c.workers)):
        print(
            f"{cell.server:10} {cell.protocol:8} {cell.workers:>7} {cell.rps:>8.0f} "
            f"{cell.cpu_per_request * 1e6:>10.0f} {cell.per_cpu_second:>9.0f} {cell.errors:>6}"
        )
    print()
    print("Scaling: requests/s over one worker's")
    for protocol in ("rest", "grpc"):
        one = cells.get(("mlp", protocol, 1))
        if one is None:
            continue
        ratios = [
            f"x{n}: {cells[('mlp', protocol, n)].rps / one.rps:.2f}"
            for n in counts
            if ("mlp", protocol, n) in cells
        ]
        print(f"  mlp {protocol:4}  " + ",  ".join(ratios))
    print("Requests per server CPU-second: mlp REST over FastAPI (same number of workers)")
    for n in counts:
        ours, theirs = cells.get(("mlp", "rest", n)), cells.get(("fastapi", "rest", n))
        if ours and theirs:
            ratio = ours.per_cpu_second / theirs.per_cpu_second
            print(f"  x{n}: {ours.per_cpu_second:.0f} / {theirs.per_cpu_second:.0f} = {ratio:.2f}x")
    for n in counts:
        ours, theirs = cells.get(("mlp", "grpc", n)), cells.get(("fastapi", "rest", n))
        if ours and theirs:
            ratio = ours.per_cpu_second / theirs.per_cpu_second
            print(f"  mlp gRPC x{n} over FastAPI REST x{n}: {ratio:.2f}x")
    floor, one = cells.get(("grpc", "grpc", 1)), cells.get(("mlp", "grpc", 1))
    if floor and one:
        ratio = one.cpu_per_request / floor.cpu_per_request
        verdict = "met" if ratio <= 1.3 else "MISSED"
        print(
            f"One worker's gRPC CPU per request over grpc's do-nothing floor: "
            f"{one.cpu_per_request * 1e6:.0f} / {floor.cpu_per_request * 1e6:.0f} us = {ratio:.2f}x "
            f"(goal <= 1.3x: {verdict})"
        )
    if max(counts) + 1 > cpus:
        print(
            f"Note: {cpus} CPUs for up to {max(counts)} workers and the load generator: throughput here is bounded by the machine."
        )


if __name__ == "__main__":
    main()
