"""/metrics, bearer-token auth and CORS."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families
from serve_helpers import cpu_config, linear_model, write_bundle
from tritonclient.utils import InferenceServerException

from mlp_serve.server import BackgroundServer

BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


def samples(url: str) -> dict[str, list]:
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def test_metrics_count_requests_by_model_version_protocol_and_status(repo):
    write_bundle(repo, "linear", 1, linear_model())
    with BackgroundServer(repo, cpu_config()) as server:
        url = server.http_url
        for _ in range(3):
            assert httpx.post(f"{url}/v2/models/linear/infer", json=BODY).status_code == 200
        bad = {"inputs": [{**BODY["inputs"][0], "datatype": "INT32"}]}
        assert httpx.post(f"{url}/v2/models/linear/infer", json=bad).status_code == 400
        assert httpx.post(f"{url}/v2/models/ghost/infer", json=BODY).status_code == 404
        found = samples(url)

        counts = {
            (
                s.labels["model"],
                s.labels["version"],
                s.labels["protocol"],
                s.labels["status"],
            ): s.value
            for s in found["mlp_inference_requests_total"]
        }
        assert counts[("linear", "1", "rest", "ok")] == 3
        assert counts[("linear", "1", "rest", "invalid_input")] == 1
        assert counts[("_unknown", "", "rest", "not_found")] == 1
        durations = [s for s in found["mlp_inference_request_duration_seconds_count"]]
        assert sum(s.value for s in durations if s.labels["model"] == "linear") == 4
        for name in (
            "mlp_inference_queue_duration_seconds_count",
            "mlp_inference_compute_duration_seconds_count",
            "mlp_inference_batch_size_count",
        ):
            assert sum(s.value for s in found[name]) == 3, name
        (info,) = found["mlp_inference_model_info"]
        assert info.labels == {
            "model": "linear",
            "version": "1",
            "provider": "CPUExecutionProvider",
        }
        assert found["mlp_inference_models_loaded"][0].value == 1
        in_flight = found["mlp_inference_in_flight_requests"]
        assert all(s.value == 0 for s in in_flight)


def test_bearer_token_guards_inference_but_not_health(repo):
    write_bundle(repo, "linear", 1, linear_model())
    with BackgroundServer(repo, cpu_config(auth_token="t0ken")) as server:
        url = server.http_url
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200
        assert httpx.get(f"{url}/metrics").status_code == 200
        denied = httpx.post(f"{url}/v2/models/linear/infer", json=BODY)
        assert denied.status_code == 401
        assert denied.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer" in denied.json()["error"]
        assert httpx.get(f"{url}/v2/models/linear").status_code == 401
        assert httpx.post(f"{url}/v1/models/linear/predict", json={"rows": []}).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert (
            httpx.post(f"{url}/v2/models/linear/infer", json=BODY, headers=wrong).status_code == 401
        )

        client = triton.InferenceServerClient(url.removeprefix("http://"))
        tensor = triton.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
        with pytest.raises(InferenceServerException):
            client.infer("linear", [tensor])
        result = client.infer("linear", [tensor], headers={"Authorization": "Bearer t0ken"})
        assert result.as_numpy("y").shape == (1, 3)


def test_cors_when_configured(repo):
    write_bundle(repo, "linear", 1, linear_model())
    config = cpu_config(cors_origins=["http://app.example"])
    with BackgroundServer(repo, config) as server:
        response = httpx.options(
            f"{server.http_url}/v2/models/linear/infer",
            headers={
                "Origin": "http://app.example",
                "Access-Control-Request-Method": "POST",
            },
        )
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "http://app.example"
        other = httpx.get(
            f"{server.http_url}/v2/health/live", headers={"Origin": "http://evil.example"}
        )
        assert "access-control-allow-origin" not in other.headers
