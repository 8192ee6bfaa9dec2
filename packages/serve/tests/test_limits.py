"""Limits on real servers: slow and oversized HTTP headers (raw sockets), keep-alive and
concurrency, gRPC message and metadata sizes, and the bytes a model's queue may hold."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import httpx
import pytest
from grpc_helpers import INFERENCE, raw_call
from serve_helpers import cpu_config, linear_model, write_bundle

from mlp_serve._generated import mlp_inference_pb2 as pb
from mlp_serve.server import BackgroundServer

HEADERS = b"POST /v2/models/linear/infer HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 400


def rest_body(rows: int) -> dict:
    return {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 4], "data": [1] * 4 * rows}]
    }


def grpc_body(rows: int) -> bytes:
    request = pb.ModelInferRequest(model_name="linear")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[rows, 4])
    tensor.contents.fp32_contents.extend([1.0] * (4 * rows))
    return request.SerializeToString()


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


def read_until_closed(sock: socket.socket, seconds: float = 15.0) -> bytes:
    """Everything the server sends until it closes the connection (bounded, for a safe test)."""
    sock.settimeout(0.2)
    received = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"the server kept the connection open; it sent {received[:80]!r}")


@pytest.fixture
def guarded(repo: Path):
    write_bundle(repo, "linear", 1, linear_model())
    config = cpu_config(
        http_header_timeout_seconds=0.5,
        http_max_header_bytes=8 * 1024,
        http_keep_alive_seconds=1,
    )
    with BackgroundServer(repo, config) as server:
        yield server


def test_a_client_sending_its_headers_byte_by_byte_is_cut_off(guarded):
    sock = connect(guarded.http_url)
    sock.settimeout(0.05)
    sent, answer = 0, b""
    with sock:
        for byte in HEADERS:  # 450 bytes, one every 50 ms: 22 s if never cut off
            try:
                sock.sendall(bytes([byte]))
                sent += 1
                answer = sock.recv(4096)  # the server spoke (or closed): cut off
            except TimeoutError:
                continue  # still waiting for the rest, as a patient server would
            except OSError:  # reset: cut off
                break
            break
        answer += read_until_closed(sock) if answer else b""
    assert sent < len(HEADERS), "the server waited for the whole slow header"
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"took longer than 0.5 s" in answer
    assert httpx.post(f"{guarded.http_url}/v2/models/linear/infer", json=rest_body(1)).is_success


def test_a_connection_that_sends_nothing_is_closed(guarded):
    with connect(guarded.http_url) as sock:
        assert read_until_closed(sock) == b""


def test_headers_over_the_limit_get_431_and_a_large_body_is_not_headers(guarded):
    with connect(guarded.http_url) as sock:
        sock.sendall(HEADERS + b"a" * 10_000 + b"\r\n\r\n")
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert b"8192 bytes" in answer
    # A 20 KB body after small headers is fine.
    body = {"id": "p" * 20_000, **rest_body(2)}
    big = httpx.post(f"{guarded.http_url}/v2/models/linear/infer", json=body)
    assert big.status_code == 200 and big.json()["outputs"][0]["shape"] == [2, 3]


def test_an_idle_kept_alive_connection_is_closed(guarded):
    request = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    with connect(guarded.http_url) as sock:
        sock.sendall(request)
        answer = read_until_closed(sock)  # answered, then closed after 1 s idle
    assert answer.startswith(b"HTTP/1.1 200 ")


def test_connections_beyond_the_concurrency_cap_get_503(repo: Path):
    write_bundle(repo, "linear", 1, linear_model())
    with BackgroundServer(repo, cpu_config(http_max_concurrency=3)) as server:
        held = [connect(server.http_url) for _ in range(3)]
        try:
            time.sleep(0.2)  # the server accepted them (they stay: 10 s for their headers)
            refused = httpx.get(f"{server.http_url}/v2/health/live")
            assert refused.status_code == 503
        finally:
            for sock in held:
                sock.close()
        wait_for_status(f"{server.http_url}/v2/health/live", 200)


def wait_for_status(url: str, status: int, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while httpx.get(url).status_code != status:
        assert time.monotonic() < deadline, f"{url} never answered {status}"
        time.sleep(0.05)


def test_grpc_messages_and_metadata_over_their_limits_are_refused(repo: Path):
    write_bundle(repo, "linear", 1, linear_model())
    config = cpu_config(grpc_max_message_bytes=4096, grpc_max_metadata_bytes=2048)
    with BackgroundServer(repo, config) as server:
        assert server.ports is not None
        with grpc.insecure_channel(server.ports.grpc_address) as channel:
            with pytest.raises(grpc.RpcError) as big:
                raw_call(channel, "ModelInfer", grpc_body(300))  # ~4.8 KB
            assert big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
            with pytest.raises(grpc.RpcError) as loud:
                raw_call(channel, "ModelInfer", grpc_body(1), metadata=(("x-pad", "a" * 4096),))
            assert loud.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
            assert "metadata size" in loud.value.details()  # type: ignore[attr-defined]
            # Under the limits, the same channel is answered.
            quiet = (("x-pad", "a" * 1024),)
            body = raw_call(channel, "ModelInfer", grpc_body(2), metadata=quiet)
            answer = pb.ModelInferResponse.FromString(body)
            assert list(answer.outputs[0].shape) == [2, 3]


def test_the_queue_refuses_requests_past_its_bytes_with_503_and_resource_exhausted(repo: Path):
    write_bundle(repo, "linear", 1, linear_model())
    # The first request's batch waits 1.5 s for company, so the others queue behind it. 16 bytes
    # a row: 5 rows (80 B) fit in 200, 10 more (160 B) do not.
    config = cpu_config(batching={"max_queue_delay_ms": 1500.0, "max_queue_bytes": 200})
    with BackgroundServer(repo, config) as server, httpx.Client(base_url=server.http_url) as http:
        assert server.ports is not None
        url = "/v2/models/linear/infer"
        answers: dict[int, httpx.Response] = {}

        def post(rows: int) -> None:
            answers[rows] = http.post(url, json=rest_body(rows))

        leader = threading.Thread(target=post, args=(1,))  # taken to lead: not queued
        leader.start()
        time.sleep(0.2)
        company = threading.Thread(target=post, args=(5,))  # queued: 80 bytes
        company.start()
        time.sleep(0.2)
        refused = http.post(url, json=rest_body(10))
        assert refused.status_code == 503
        assert "max_queue_bytes" in refused.json()["error"]
        assert refused.headers["retry-after"] == "1"
        with grpc.insecure_channel(server.ports.grpc_address) as channel:
            with pytest.raises(grpc.RpcError) as full:
                channel.unary_unary(INFERENCE + "ModelInfer")(grpc_body(10), timeout=10)
            assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
            assert "max_queue_bytes" in full.value.details()  # type: ignore[attr-defined]
        leader.join(30)
        company.join(30)
        assert answers[1].status_code == answers[5].status_code == 200
        # Alone, a request over the limit is taken: it could never run otherwise.
        assert http.post(url, json=rest_body(20)).status_code == 200
