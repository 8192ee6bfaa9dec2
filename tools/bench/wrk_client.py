"""REST load from wrk (C, one thread, epoll), for bench_serve.py.

wrk is the load generator REST servers are usually measured with: HTTP/1.1, one keep-alive
connection per concurrent client, each sending its next request as soon as the last answer came.
The request (method, body, headers) and the report (requests, errors, p50/p99 in microseconds)
travel through a small Lua script written per cell, since wrk's command line has no body option.
wrk counts an answer that is not 2xx/3xx as a status error, so a server that fails is seen.

Debian and Ubuntu ship it as ``wrk``. It runs whole seconds only: ``seconds`` is rounded up.
"""

from __future__ import annotations

import http.client
import math
import re
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from h2load_client import Measured, Request

# done() prints one line the parser below reads; latencies are in microseconds.
_SCRIPT = """\
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("MLP-WRK %d %d %d %d %d\\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout, latency:percentile(50),
    latency:percentile(99)))
end
"""
_REPORT = re.compile(r"MLP-WRK (\d+) (\d+) (\d+) (\d+) (\d+)")


def find() -> str | None:
    return shutil.which("wrk")


def run(request: Request, concurrency: int, seconds: float, warmup: int) -> Measured:
    """``warmup`` requests on one connection, then ``seconds`` of ``concurrency`` connections."""
    wrk = find()
    if wrk is None:
        raise RuntimeError("wrk is not installed (Debian: apt-get install wrk)")
    if b"]==]" in request.body:
        raise ValueError("the body holds the Lua string's closing bracket")
    _warm(request, warmup)
    with tempfile.TemporaryDirectory(prefix="wrk-") as folder:
        script = Path(folder) / "request.lua"
        script.write_text(_SCRIPT.format(body=request.body.decode()))
        duration = f"{max(1, math.ceil(seconds))}s"
        command = [wrk, "-t1", f"-c{concurrency}", f"-d{duration}", "-s", str(script)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run([*command, request.url], capture_output=True, text=True, timeout=600)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    found = _REPORT.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-1500:]}{done.stderr}")
    requests, micros, errors, p50, p99 = (int(x) for x in found.groups())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # wrk reports percentiles, not every latency.
    percentiles = {50.0: p50 / 1e6, 99.0: p99 / 1e6}
    client_cpu = cpu / wall if wall else 0.0
    return Measured(requests, micros / 1e6, [], errors, client_cpu, percentiles)


def _warm(request: Request, count: int) -> None:
    parts = urlsplit(request.url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        for _ in range(count):
            conn.request("POST", parts.path, request.body, {"Content-Type": "application/json"})
            conn.getresponse().read()
    finally:
        conn.close()
