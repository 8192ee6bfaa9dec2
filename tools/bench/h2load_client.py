"""Load from h2load, nghttp2's benchmarking client (C, one thread), for bench_serve.py.

A Python load generator saturates its own core near 6-7k requests/s against a gRPC server
that does nothing, so past a few thousand requests/s it measures itself as much as the server.
h2load spends a few microseconds per request, and it speaks both protocols the benchmark needs:
HTTP/1.1 (``--h1``, one keep-alive connection per concurrent client, as REST clients connect) and
HTTP/2 (gRPC: one connection carrying ``concurrency`` streams at once, as one shared channel).

gRPC answers errors with HTTP status 200 and a ``grpc-status`` trailer, which h2load does not
read. So a gRPC cell counts as correct only the responses whose body is exactly as long as the
right answer's (the benchmark checks that answer's content before timing): an error has no body.

Debian and Ubuntu ship h2load in the ``nghttp2-client`` package.
"""

from __future__ import annotations

import re
import resource
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")
JSON_HEADERS = ("content-type: application/json",)


def find() -> str | None:
    return shutil.which("h2load")


@dataclass(frozen=True)
class Request:
    """What every request of a cell sends, and how to recognise a correct answer."""

    url: str
    body: bytes  # for gRPC: the framed message (5-byte prefix + protobuf)
    headers: tuple[str, ...]
    http1: bool
    grpc_answer_bytes: int | None = None  # gRPC: body length of a correct response


def grpc_request(url: str, message: bytes, answer: bytes) -> Request:
    """A gRPC unary call: ``message`` framed as gRPC frames it; ``answer``, the right reply."""
    return Request(
        url, _frame(message), GRPC_HEADERS, http1=False, grpc_answer_bytes=5 + len(answer)
    )


def rest_request(url: str, body: bytes) -> Request:
    return Request(url, body, JSON_HEADERS, http1=True)


def _frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


@dataclass
class Measured:
    requests: int
    seconds: float
    latencies: list[float]  # seconds
    errors: int
    client_cpu: float  # the load generator's CPU seconds over the wall seconds
    # Percentile (0-100) -> seconds, from a generator that reports only those (wrk).
    percentiles: dict[float, float] | None = None


def run(request: Request, concurrency: int, seconds: float, warmup: int) -> Measured:
    """``warmup`` requests, then as many as ``seconds`` allow, from ``concurrency`` clients."""
    h2load = find()
    if h2load is None:
        raise RuntimeError("h2load is not installed (Debian: apt-get install nghttp2-client)")
    with tempfile.TemporaryDirectory(prefix="h2load-") as folder:
        body, log = Path(folder) / "body", Path(folder) / "log"
        body.write_bytes(request.body)
        shape = (
            ["--h1", "-c", str(concurrency), "-m", "1"]
            if request.http1
            else ["-c", "1", "-m", str(concurrency)]
        )
        common = [h2load, *shape, "-d", str(body)]
        for header in request.headers:
            common += ["-H", header]
        _h2load([*common, "-n", str(max(warmup, concurrency)), request.url])
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        output = _h2load(
            [*common, "-D", f"{round(seconds * 1000)}ms", "--log-file", str(log), request.url]
        )
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        latencies = [int(line.split("\t")[2]) / 1e6 for line in log.read_text().splitlines()]
    done, succeeded = _requests(output)
    errors = done - succeeded
    if request.grpc_answer_bytes is not None:
        errors = max(errors, done - _data_bytes(output) // request.grpc_answer_bytes)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Measured(done, _duration(output), latencies, errors, cpu / wall if wall else 0.0)


def _h2load(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or "finished in" not in done.stdout:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-1500:]}{done.stderr}")
    return done.stdout


def _requests(output: str) -> tuple[int, int]:
    found = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", output)
    if found is None:
        raise RuntimeError(f"unexpected h2load output:\n{output[-1500:]}")
    return int(found[1]), int(found[2])


def _data_bytes(output: str) -> int:
    found = re.search(r"traffic: .*\((\d+)\) data", output)
    return int(found[1]) if found else 0


def _duration(output: str) -> float:
    found = re.search(r"finished in ([\d.]+)(us|ms|s),", output)
    if found is None:
        raise RuntimeError(f"unexpected h2load output:\n{output[-1500:]}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0}[found[2]]
    return float(found[1]) * scale
