"""Per-client rate limits: token buckets keyed by token or address, per model, on real servers.

REST with httpx, gRPC with a raw channel (to read the trailing ``retry-after``) and
tritonclient.grpc. Rates are tiny, so no bucket refills while a test runs.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from grpc_helpers import raw_call
from serve_helpers import cpu_config, int_model, linear_model, write_bundle
from tritonclient.utils import InferenceServerException

from mlp_serve._generated import mlp_inference_pb2 as pb
from mlp_serve.config import RateLimit, RateLimitConfig
from mlp_serve.ratelimit import RateLimiter, peer_address
from mlp_serve.server import BackgroundServer

BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
TOKEN_A = "client-a-0123456789abcdef"
TOKEN_B = "client-b-0123456789abcdef"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_refills_at_its_rate_and_models_have_their_own():
    clock = Clock()
    config = RateLimitConfig(rate=2, burst=3, models={"big": RateLimit(rate=0.5)})
    limiter = RateLimiter(config, clock=clock)
    assert [limiter.wait("a", "m") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.wait("a", "m") == pytest.approx(0.5)  # one token at 2/s
    assert limiter.wait("a", "other-model") > 0  # the same server-wide budget
    assert limiter.wait("b", "m") == 0.0  # another client, another bucket
    clock.now += 0.5
    assert limiter.wait("a", "m") == 0.0
    assert limiter.wait("a", "m") > 0
    # "big" has its own budget: burst defaults to one second's worth, at least 1.
    assert limiter.wait("a", "big") == 0.0
    assert limiter.wait("a", "big") == pytest.approx(2.0)
    clock.now += 10
    assert [limiter.wait("a", "m") for _ in range(4)].count(0.0) == 3  # refilled up to burst only


def test_only_models_listed_are_limited_when_no_server_wide_rate_is_set():
    limiter = RateLimiter(RateLimitConfig(models={"m": RateLimit(rate=1, burst=1)}), clock=Clock())
    assert limiter.budget_of("other") is None
    assert all(limiter.wait("a", "other") == 0.0 for _ in range(50))
    assert limiter.wait("a", "m") == 0.0 and limiter.wait("a", "m") > 0


def test_idle_full_buckets_are_forgotten_so_many_clients_do_not_grow_memory(monkeypatch):
    import mlp_serve.ratelimit as ratelimit

    monkeypatch.setattr(ratelimit, "SWEEP_AT", 100)
    clock = Clock()
    limiter = RateLimiter(RateLimitConfig(rate=10, burst=1), clock=clock)
    limiter._sweep_at = 100
    for client in range(1000):
        limiter.wait(f"10.0.{client // 256}.{client % 256}", "")
        clock.now += 0.05  # each bucket refills in 0.1 s
    assert len(limiter._buckets) <= 200
    # A client that is still empty is remembered through a sweep.
    assert limiter.wait("10.0.3.231", "") > 0


def test_peer_addresses_without_ports():
    assert peer_address("ipv4:10.1.2.3:5000") == "10.1.2.3"
    assert peer_address("ipv6:[::1]:5000") == "::1"
    assert peer_address("ipv6:%5B::1%5D:5000") == "::1"
    assert peer_address("unix:/tmp/s") == "unix:/tmp/s"


@pytest.fixture
def limited(repo: Path):
    write_bundle(repo, "linear", 1, linear_model())
    write_bundle(repo, "ints", 1, int_model())
    config = cpu_config(
        rate_limit={"rate": 0.01, "burst": 2, "models": {"ints": {"rate": 0.01, "burst": 1}}}
    )
    with BackgroundServer(repo, config) as server:
        yield server


def _rate_limited_count(url: str, model: str, protocol: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    pattern = (
        rf'mlp_inference_requests_total\{{model="{model}",protocol="{protocol}",'
        rf'status="rate_limited",version=""\}} (\S+)'
    )
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


def test_rest_over_the_limit_gets_429_with_retry_after_and_health_and_metrics_never_do(limited):
    url = limited.http_url
    with httpx.Client(base_url=url) as client:
        assert [
            client.post("/v2/models/linear/infer", json=BODY).status_code for _ in range(2)
        ] == [
            200,
            200,
        ]
        refused = client.post("/v2/models/linear/infer", json=BODY)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == str(math.ceil(1 / 0.01))
        assert "rate limit" in refused.json()["error"]
        assert refused.headers.get("x-request-id")  # still gets the request's id
        # The server-wide budget covers other endpoints too, but never health or metrics.
        assert client.get("/v2/models/linear").status_code == 429
        for _ in range(10):
            assert client.get("/v2/health/ready").status_code == 200
            assert client.get("/v2/health/live").status_code == 200
            assert client.get("/metrics").status_code == 200
        # "ints" has its own budget of 1.
        ints = {"inputs": [{"name": "a", "datatype": "INT64", "shape": [1, 2], "data": [1, 2]}]}
        assert client.post("/v2/models/ints/infer", json=ints).status_code == 200
        assert client.post("/v2/models/ints/infer", json=ints).status_code == 429
        # A name the server does not know shares one label value.
        assert client.post("/v2/models/nope/infer", json=BODY).status_code == 429
    assert _rate_limited_count(url, "linear", "rest") == 2
    assert _rate_limited_count(url, "ints", "rest") == 1
    assert _rate_limited_count(url, "_unknown", "rest") == 1


def test_grpc_over_the_limit_gets_resource_exhausted_with_a_retry_after_trailer(limited):
    assert limited.ports is not None
    address = limited.ports.grpc_address
    request = pb.ModelInferRequest(model_name="linear")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([1, 2, 3, 4])
    body = request.SerializeToString()
    with grpc.insecure_channel(address) as channel:
        for _ in range(2):
            assert pb.ModelInferResponse.FromString(raw_call(channel, "ModelInfer", body)).outputs
        with pytest.raises(grpc.RpcError) as caught:
            raw_call(channel, "ModelInfer", body)
        error = caught.value
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        assert "rate limit" in error.details()  # type: ignore[attr-defined]
        trailers = {k: v for k, v in error.trailing_metadata()}  # type: ignore[attr-defined]
        assert trailers["retry-after"] == "100"
        # Liveness and readiness never limited.
        for _ in range(5):
            assert (
                raw_call(channel, "ServerLive", b"")
                == pb.ServerLiveResponse(live=True).SerializeToString()
            )
    with triton_grpc.InferenceServerClient(address) as client:
        with pytest.raises(InferenceServerException) as refused:
            client.get_model_metadata("linear")
        assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert _rate_limited_count(limited.http_url, "linear", "grpc") == 2


def test_with_auth_each_token_has_its_own_budget_and_unknown_tokens_share_the_address(
    repo: Path, tmp_path: Path
):
    write_bundle(repo, "linear", 1, linear_model())
    tokens = tmp_path / "tokens"
    tokens.write_text(f"inference {TOKEN_A}\ninference {TOKEN_B}\n", encoding="utf-8")
    config = cpu_config(
        rate_limit={"rate": 0.01, "burst": 1},
        auth={"tokens_file": str(tokens), "tokens_env": None},
    )
    with BackgroundServer(repo, config) as server, httpx.Client(base_url=server.http_url) as c:

        def status(token: str | None) -> int:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return c.post("/v2/models/linear/infer", json=BODY, headers=headers).status_code

        assert [status(TOKEN_A), status(TOKEN_A)] == [200, 429]
        assert [status(TOKEN_B), status(TOKEN_B)] == [200, 429]  # A's spending is not B's
        # Unknown or missing tokens are limited by address: the first guess gets its 401, the
        # next ones are refused before the token is even looked at.
        assert [status("guess-0123456789abcdef"), status(None), status("x" * 20)] == [
            401,
            429,
            429,
        ]
        assert server.ports is not None
        tensor = triton_grpc.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
        with triton_grpc.InferenceServerClient(server.ports.grpc_address) as client:
            # Token A's budget is shared between REST and gRPC: one server, one limiter; and
            # wrong tokens over gRPC spend the same address budget as over REST.
            for headers in ({"authorization": f"Bearer {TOKEN_A}"}, {"authorization": "x" * 20}):
                with pytest.raises(InferenceServerException) as refused:
                    client.infer("linear", [tensor], headers=headers)
                assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
