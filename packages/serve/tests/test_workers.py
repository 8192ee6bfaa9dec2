"""``mlp serve --workers 2`` as a real process: both workers answer REST and gRPC on the shared
ports, /metrics sums them whichever answers, admin unload/load and new versions reach every
worker, a killed worker is restarted and serves again, SIGTERM drains both and exits 0.

Which worker answered is read from the kernel, not from the server: the server-side end of the
test's own TCP connection belongs to one worker process (psutil lists each process's sockets).
So every request here goes over a fresh connection whose owner is looked up while it is open.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
from grpc_helpers import raw_call
from serve_helpers import W, linear_model, slow_model, start_server_process, write_bundle

from mlp_serve._generated import mlp_inference_pb2 as pb

TOKEN = "workers-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
X = np.arange(8, dtype=np.float32).reshape(2, 4)
W2 = (W * 2).astype(np.float32)  # version 2's weights: its answers differ from version 1's
BIAS = np.zeros(3, dtype=np.float32)


class Server:
    def __init__(self, process, url: str, grpc_address: str, repo: Path) -> None:
        self.process = process
        self.repo = repo
        self.host, port = url.removeprefix("http://").rsplit(":", 1)
        self.http_port = int(port)
        self.grpc_address = grpc_address
        self.grpc_port = int(grpc_address.rsplit(":", 1)[1])

    def workers(self) -> list[int]:
        return sorted(p.pid for p in psutil.Process(self.process.pid).children())

    def owner(self, local_port: int, server_port: int) -> int:
        """The worker whose socket is the server end of the connection from ``local_port``."""
        # A connection waiting in a starting worker's backlog has no socket in any process
        # until that worker accepts it: wait for that too.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for pid in self.workers():
                try:
                    connections = psutil.Process(pid).net_connections(kind="tcp")
                except psutil.NoSuchProcess:
                    continue
                for c in connections:
                    if c.laddr.port == server_port and c.raddr and c.raddr.port == local_port:
                        return pid
            time.sleep(0.01)  # accepted, not yet listed
        raise AssertionError(f"no worker holds the connection from port {local_port}")

    def rest(
        self, method: str, path: str, body: object = None, *, auth: bool = True
    ) -> tuple[int, dict | str, int]:
        """(status, JSON or text, worker pid) of one request over a new connection."""
        connection = http.client.HTTPConnection(self.host, self.http_port, timeout=120)
        try:
            connection.connect()
            worker = self.owner(connection.sock.getsockname()[1], self.http_port)
            data = None if body is None else json.dumps(body)
            headers = {"content-type": "application/json", **(AUTH if auth else {})}
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            text = response.read().decode()
            kind = response.getheader("content-type", "")
            return response.status, json.loads(text) if "json" in kind else text, worker
        finally:
            connection.close()

    def grpc_infer(self, model: str) -> tuple[np.ndarray, str, int]:
        """(output, model version, worker pid) of one ModelInfer over a new connection."""
        # A channel of its own (no shared subchannel pool), so a connection of its own.
        before = self._grpc_local_ports()
        with grpc.insecure_channel(
            self.grpc_address, options=[("grpc.use_local_subchannel_pool", 1)]
        ) as channel:
            request = pb.ModelInferRequest(model_name=model)
            request.inputs.add(name="x", datatype="FP32", shape=list(X.shape))
            request.raw_input_contents.append(X.tobytes())
            reply = pb.ModelInferResponse.FromString(
                raw_call(
                    channel,
                    "ModelInfer",
                    request.SerializeToString(),
                    (("authorization", f"Bearer {TOKEN}"),),
                )
            )
            (port,) = self._grpc_local_ports() - before  # the channel's one connection, open
            worker = self.owner(port, self.grpc_port)
            output = np.frombuffer(reply.raw_output_contents[0], dtype=np.float32).reshape(2, 3)
            return output, reply.model_version, worker

    def _grpc_local_ports(self) -> set[int]:
        return {
            c.laddr.port
            for c in psutil.Process().net_connections(kind="tcp")
            if c.raddr and c.raddr.port == self.grpc_port and c.status == psutil.CONN_ESTABLISHED
        }

    def infer_body(self) -> dict:
        return {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [2, 4], "data": X.ravel().tolist()}
            ]
        }

    def metrics(self) -> tuple[str, int]:
        status, text, worker = self.rest("GET", "/metrics", auth=False)
        assert status == 200
        assert isinstance(text, str)
        return text, worker

    def until_both(self, ask, count: int = 40):
        """Ask over fresh connections until both workers have answered; every answer."""
        answers = []
        for _ in range(count):
            answers.append(ask())
            if {a[-1] for a in answers} == set(self.workers()):
                return answers
        raise AssertionError(f"{count} connections all went to {sorted({a[-1] for a in answers})}")


def expected(w: np.ndarray) -> np.ndarray:
    return X @ w + BIAS


def requests_total(text: str, model: str = "linear", status: str = "ok") -> float:
    pattern = r"^mlp_inference_requests_total\{([^}]*)\} (\S+)$"
    total = 0.0
    for labels, value in re.findall(pattern, text, re.M):
        if f'model="{model}"' in labels and f'status="{status}"' in labels:
            total += float(value)
    return total


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    repo = tmp_path_factory.mktemp("workers") / "repo"
    write_bundle(repo, "linear", 1, linear_model(W, BIAS))
    write_bundle(repo, "spare", 1, linear_model(W, BIAS))
    write_bundle(repo, "slow", 1, slow_model(steps=200), manifest=False)
    env = {**os.environ, "MLP_SERVE_TOKENS": f"inference,admin {TOKEN}"}
    process, url, grpc_address = start_server_process(
        repo, "--workers", "2", "--set", "poll_seconds=0.3", env=env
    )
    try:
        yield Server(process, url, grpc_address, repo)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
        for child in psutil.Process().children(recursive=True):  # orphans of a failed test
            if child.pid != process.pid:
                child.kill()


def test_two_workers_answer_rest_and_grpc_on_the_same_ports(server):
    assert len(server.workers()) == 2
    for status, body, _ in server.until_both(
        lambda: server.rest("POST", "/v2/models/linear/infer", server.infer_body())
    ):
        assert status == 200, body
        assert isinstance(body, dict)
        np.testing.assert_allclose(
            np.reshape(body["outputs"][0]["data"], (2, 3)), expected(W), rtol=1e-5
        )
    for output, version, _ in server.until_both(lambda: server.grpc_infer("linear")):
        assert version == "1"
        np.testing.assert_allclose(output, expected(W), rtol=1e-5)


def test_metrics_sum_every_worker_whichever_answers(server):
    before, _ = server.metrics()
    answered = server.until_both(
        lambda: server.rest("POST", "/v2/models/linear/infer", server.infer_body())
    )
    grpc_answered = server.until_both(lambda: server.grpc_infer("linear"))
    total = requests_total(before) + len(answered) + len(grpc_answered)
    for text, _ in server.until_both(server.metrics):
        assert requests_total(text) == total
        # Each live worker's own process families, labelled with its pid.
        pids = re.findall(r'^process_cpu_seconds_total\{pid="(\d+)"\}', text, re.M)
        assert sorted(int(p) for p in pids) == server.workers()
        assert re.search(r"^mlp_inference_models_loaded 3\.0$", text, re.M)


def test_admin_unload_and_load_reach_every_worker(server):
    status, body, _ = server.rest("POST", "/v2/repository/models/linear/unload", {})
    assert status == 200, body
    for status, body, _ in server.until_both(lambda: server.rest("GET", "/v2/models/linear/ready")):
        assert status == 503 and isinstance(body, dict) and body["ready"] is False
    for status, body, _ in server.until_both(
        lambda: server.rest("POST", "/v2/models/linear/infer", server.infer_body())
    ):
        assert status == 503 and "unloaded" in body["error"]
    status, body, _ = server.rest("POST", "/v2/repository/models/linear/load", {})
    assert status == 200, body
    for status, body, _ in server.until_both(lambda: server.rest("GET", "/v2/models/linear/ready")):
        assert status == 200 and isinstance(body, dict) and body["ready"] is True


def test_a_new_version_on_disk_reaches_every_worker(server):
    write_bundle(server.repo, "linear", 2, linear_model(W2, BIAS))
    deadline = time.monotonic() + 30
    latest: dict[int, str] = {}
    while set(server.workers()) != {w for w, v in latest.items() if v == "2"}:
        assert time.monotonic() < deadline, f"versions answered: {latest}"
        output, version, worker = server.grpc_infer("linear")
        latest[worker] = version
        if version == "2":
            np.testing.assert_allclose(output, expected(W2), rtol=1e-5)


def test_a_killed_worker_is_restarted_and_keeps_the_admin_state(server):
    status, body, _ = server.rest("POST", "/v2/repository/models/spare/unload", {})
    assert status == 200, body
    counted, _ = server.metrics()
    survivor, victim = server.workers()
    os.kill(victim, signal.SIGKILL)
    # Gone (reaped by the supervisor) before asking: a connection sent to its dying socket
    # would be reset, and that is the kill, not the server.
    psutil.Process(victim).wait(30)
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline, "no worker came back"
        workers = server.workers()
        if len(workers) == 2 and survivor in workers and victim not in workers:
            break
        # Meanwhile the server keeps answering (on the survivor).
        status, body, worker = server.rest("POST", "/v2/models/linear/infer", server.infer_body())
        assert status == 200 and worker == survivor, body
        time.sleep(0.05)
    # The new worker serves once ready; it never answers before it applied the unload.
    newcomer = (set(workers) - {survivor}).pop()
    deadline = time.monotonic() + 60
    while True:
        status, body, worker = server.rest("GET", "/v2/models/spare/ready")
        assert status == 503, f"worker {worker} serves the unloaded model: {body}"
        if worker == newcomer:
            break
        assert time.monotonic() < deadline, "the restarted worker never answered"
    text, _ = server.metrics()
    # The dead worker's requests still count; its process families are gone.
    assert requests_total(text) >= requests_total(counted)
    assert f'pid="{victim}"' not in text and f'pid="{newcomer}"' in text
    assert server.process.poll() is None


def test_sigterm_drains_every_worker_then_exits_0(server):
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}]
    }
    state_dir = psutil.Process(server.workers()[0]).environ()["PROMETHEUS_MULTIPROC_DIR"]
    assert Path(state_dir).is_dir()
    # One slow request held open on each worker.
    connections: dict[int, http.client.HTTPConnection] = {}
    while len(connections) < 2:
        connection = http.client.HTTPConnection(server.host, server.http_port, timeout=120)
        connection.connect()
        worker = server.owner(connection.sock.getsockname()[1], server.http_port)
        if worker in connections:
            connection.close()
        else:
            connections[worker] = connection
    answers: dict[int, tuple[int, dict]] = {}

    def slow(worker: int, connection: http.client.HTTPConnection) -> None:
        connection.request(
            "POST",
            "/v2/models/slow/infer",
            body=json.dumps(body),
            headers={"content-type": "application/json", **AUTH},
        )
        response = connection.getresponse()
        answers[worker] = (response.status, json.loads(response.read()))

    threads = [threading.Thread(target=slow, args=item) for item in connections.items()]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while True:
        text, _ = server.metrics()
        flying = re.findall(
            r'^mlp_inference_in_flight_requests\{[^}]*model="slow"[^}]*\} (\S+)$', text, re.M
        )
        if sum(float(v) for v in flying) >= 2:
            break
        assert time.monotonic() < deadline, "the slow requests never started"
        time.sleep(0.01)
    server.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(120)
    assert sorted(answers) == sorted(connections)
    for status, answer in answers.values():
        assert status == 200, answer
        assert answer["outputs"][0]["data"] == [1.0, 2.0, 3.0, 4.0]
    assert server.process.wait(60) == 0
    assert not Path(state_dir).exists()
    for port in (server.http_port, server.grpc_port):
        with pytest.raises(OSError):
            http.client.HTTPConnection(server.host, port, timeout=2).connect()


def test_workers_stop_when_their_supervisor_is_killed(tmp_path):
    repo = tmp_path / "repo"
    write_bundle(repo, "linear", 1, linear_model(W, BIAS))
    process, url, _ = start_server_process(repo, "--workers", "2", "--drain-seconds", "1")
    try:
        workers = [psutil.Process(p.pid) for p in psutil.Process(process.pid).children()]
        assert len(workers) == 2
        state_dir = Path(workers[0].environ()["PROMETHEUS_MULTIPROC_DIR"])
        process.kill()  # SIGKILL: no chance to stop its workers itself
        process.wait(30)
        _, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, f"orphaned workers still running: {alive}"
        with pytest.raises(OSError):
            http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=2).connect()
    finally:
        if process.poll() is None:
            process.kill()
    shutil.rmtree(state_dir, ignore_errors=True)  # the supervisor's to remove, had it lived


def test_a_worker_that_fails_at_startup_stops_the_server_with_its_reason(tmp_path):
    repo = tmp_path / "repo"
    write_bundle(repo, "linear", 1, linear_model(W, BIAS))
    missing = tmp_path / "missing.pem"
    command = [sys.executable, "-m", "mlp_serve", str(repo), "--workers", "2"]
    command += ["--http-port", "0", "--grpc-port", "0", "--set", "providers=[CPUExecutionProvider]"]
    command += ["--set", f"tls.cert_file={missing}", "--set", f"tls.key_file={missing}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "mlp serve: REST on" not in done.stdout  # never announced as serving
    assert f"{missing} cannot be read" in done.stderr  # the worker's own reason
    assert "a worker failed while the server started" in done.stderr
