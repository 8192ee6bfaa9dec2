"""The Open Inference Protocol over REST, spoken by tritonclient.http and raw httpx."""

from __future__ import annotations

import json
import struct

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from serve_helpers import (
    B,
    W,
    cpu_config,
    fragile_model,
    linear_model,
    tabular_model,
    write_bundle,
    write_protocol_models,
)
from tritonclient.utils import InferenceServerException

from mlp_serve.config import BatchingConfig
from mlp_serve.server import BackgroundServer

LIMIT = 1 << 20  # max_request_bytes of this module's server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    write_protocol_models(repo)
    write_bundle(repo, "tabular", 1, tabular_model())
    write_bundle(repo, "fragile", 1, fragile_model(), manifest=False)
    write_bundle(repo, "bare", 1, linear_model(W * 2, B), manifest=False)
    # A queue delay set, so the model config below shows it in Triton's microseconds.
    config = cpu_config(max_request_bytes=LIMIT, batching=BatchingConfig(max_queue_delay_ms=2.0))
    with BackgroundServer(repo, config) as running:
        running.repo = repo
        yield running


@pytest.fixture
def client(server):
    client = triton.InferenceServerClient(server.http_url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.http_url, timeout=30) as client:
        yield client


def reference(repo, name, feeds):
    session = ort.InferenceSession(str(repo / name / "1" / "model.onnx"))
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def infer_linear(client, x, binary=True):
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    result = client.infer("linear", [tensor], outputs=[triton.InferRequestedOutput("y", binary)])
    return result.as_numpy("y")


def assert_still_serving(client):
    x = np.ones((1, 4), np.float32)
    np.testing.assert_allclose(infer_linear(client, x), x @ W + B, rtol=1e-5)


def test_health_and_server_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "mlp"
    assert "binary_tensor_data" in meta["extensions"]
    assert client.is_model_ready("linear")
    assert not client.is_model_ready("no-such-model")


def test_model_metadata_from_manifest_and_from_a_bare_graph(client):
    meta = client.get_model_metadata("linear")
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]
    assert meta["parameters"]["execution_provider"] == "CPUExecutionProvider"
    bare = client.get_model_metadata("bare", "1")
    assert bare["inputs"] == meta["inputs"]
    assert "task" not in bare["parameters"]  # no manifest: everything comes from the graph
    strings = client.get_model_metadata("strings")
    assert strings["inputs"][0]["datatype"] == "BYTES"


def test_model_config_is_tritons(client):
    config = client.get_model_config("ints")
    assert config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 64
    assert config["input"] == [{"name": "a", "data_type": "TYPE_INT64", "dims": [2]}]
    assert [o["name"] for o in config["output"]] == ["doubled", "total"]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    strings = client.get_model_config("strings")
    assert strings["input"][0]["data_type"] == "TYPE_STRING"


@pytest.mark.parametrize("binary", [False, True])
def test_linear_inference_matches_onnxruntime(server, client, binary):
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    got = infer_linear(client, x, binary)
    want = reference(server.repo, "linear", {"x": x})["y"]
    np.testing.assert_array_equal(got, want)


def test_bare_model_and_explicit_version(server, client):
    x = np.ones((2, 4), np.float32)
    tensor = triton.InferInput("x", [2, 4], "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("bare", [tensor], model_version="1")
    np.testing.assert_allclose(result.as_numpy("y"), x @ (W * 2) + B, rtol=1e-5)
    assert result.get_response()["model_version"] == "1"


@pytest.mark.parametrize("binary", [False, True])
def test_int64_model_with_chosen_outputs(client, binary):
    a = np.array([[1, 2], [30, -4]], dtype=np.int64)
    tensor = triton.InferInput("a", [2, 2], "INT64")
    tensor.set_data_from_numpy(a, binary_data=binary)
    result = client.infer("ints", [tensor], outputs=[triton.InferRequestedOutput("total", binary)])
    np.testing.assert_array_equal(result.as_numpy("total"), [[3], [26]])
    assert result.as_numpy("doubled") is None  # not asked for
    everything = client.infer("ints", [tensor])
    np.testing.assert_array_equal(everything.as_numpy("doubled"), a * 2)


@pytest.mark.parametrize("binary", [False, True])
def test_string_model(client, binary):
    text = np.array([["cat"], ["émeu"], ["zebra"]], dtype=object)
    tensor = triton.InferInput("text", [3, 1], "BYTES")
    tensor.set_data_from_numpy(text, binary_data=binary)
    result = client.infer(
        "strings",
        [tensor],
        outputs=[triton.InferRequestedOutput(n, binary) for n in ("echo", "id")],
    )
    echoed = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("echo").ravel()]
    assert echoed == ["cat", "émeu", "zebra"]
    np.testing.assert_array_equal(result.as_numpy("id"), [[0], [2], [-1]])


def test_nested_and_flat_json_data_and_no_content_type(http):
    want = (np.arange(8, dtype=np.float32).reshape(2, 4) @ W + B).ravel()
    for data in ([[0, 1, 2, 3], [4, 5, 6, 7]], list(range(8))):
        body = {
            "id": "r1",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": data}],
        }
        response = http.post("/v2/models/linear/infer", content=json.dumps(body))
        assert response.status_code == 200, response.text
        document = response.json()
        assert document["id"] == "r1"
        assert document["outputs"][0]["shape"] == [2, 3]
        np.testing.assert_allclose(document["outputs"][0]["data"], want, rtol=1e-5)


def test_binary_bytes_encoding_is_length_prefixed(http):
    raw = b"".join(struct.pack("<I", len(s)) + s for s in (b"dog", b""))
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "datatype": "BYTES",
                    "shape": [2, 1],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "echo", "parameters": {"binary_data": True}}],
        }
    ).encode()
    response = http.post(
        "/v2/models/strings/infer",
        content=header + raw,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 200, response.text
    length = int(response.headers["Inference-Header-Content-Length"])
    document = json.loads(response.content[:length])
    assert document["outputs"][0]["parameters"]["binary_data_size"] == len(raw)
    assert response.content[length:] == raw


def _post(http, body: bytes, headers=None):
    return http.post("/v2/models/linear/infer", content=body, headers=headers or {})


def _tensor_body(name="x", datatype="FP32", shape=(1, 4), data=(1, 2, 3, 4)):
    tensor = {"name": name, "datatype": datatype, "shape": list(shape), "data": list(data)}
    return json.dumps({"inputs": [tensor]}).encode()


BAD_REQUESTS = {
    "wrong datatype": (_tensor_body(datatype="INT64"), "datatype INT64, expected FP32"),
    "wrong shape": (_tensor_body(shape=(1, 5), data=range(5)), "axis 1 must be 4"),
    "wrong rank": (_tensor_body(shape=(4,)), "rank 1"),
    "element count": (_tensor_body(shape=(2, 4)), "4 elements given for shape [2, 4]"),
    "unknown input": (_tensor_body(name="z"), "unknown input 'z'"),
    "missing input": (json.dumps({"inputs": []}).encode(), "non-empty 'inputs'"),
    "not numbers": (_tensor_body(data=["a", "b", "c", "d"]), "must be numbers"),
    "invalid json": (b'{"inputs": [', "not valid JSON"),
    "batch too large": (_tensor_body(shape=(65, 4), data=[0] * 260), "max_batch_size"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_is_400_and_the_server_keeps_serving(http, client, case):
    body, message = BAD_REQUESTS[case]
    response = _post(http, body)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    assert_still_serving(client)


def test_missing_input_is_named(client):
    tensor = triton.InferInput("numeric", [1, 2], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 2), np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("tabular", [tensor])
    assert info.value.status() == "400"
    assert "missing input categorical (BYTES [-1, 1])" in info.value.message()
    assert_still_serving(client)


def _binary_body(raw: bytes, declared: int):
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [1, 4],
                    "parameters": {"binary_data_size": declared},
                }
            ]
        }
    ).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


def test_byte_size_mismatch_truncated_body_and_trailing_bytes(http, client):
    raw = np.ones((1, 4), np.float32).tobytes()
    cases = [
        (_binary_body(raw[:12], 12), "12 bytes of data, but FP32 [1, 4] needs 16"),
        (_binary_body(raw[:10], 16), "the body is truncated"),
        (_binary_body(raw + b"xx", 16), "2 bytes of binary data follow"),
    ]
    for (body, headers), message in cases:
        response = _post(http, body, headers)
        assert response.status_code == 400, response.text
        assert message in response.json()["error"]
    body, headers = _binary_body(raw, 16)
    headers["Inference-Header-Content-Length"] = str(len(body) + 5)
    assert _post(http, body, headers).status_code == 400
    good_body, good_headers = _binary_body(raw, 16)
    assert _post(http, good_body, good_headers).status_code == 200
    assert_still_serving(client)


def test_unknown_model_or_version_is_404(http, client):
    assert _post(http, _tensor_body()).status_code == 200
    missing_model = http.post("/v2/models/nope/infer", content=_tensor_body())
    assert missing_model.status_code == 404
    assert "unknown model 'nope'" in missing_model.json()["error"]
    missing_version = http.post("/v2/models/linear/versions/7/infer", content=_tensor_body())
    assert missing_version.status_code == 404
    assert "version '7'" in missing_version.json()["error"]
    assert http.get("/v2/models/nope").status_code == 404
    assert http.get("/v2/models/linear/versions/7/config").status_code == 404
    assert http.get("/v2/models/nope/ready").status_code == 404
    assert http.get("/v2/no/such/route").status_code == 404
    assert_still_serving(client)


def test_body_over_the_limit_is_413(http, client):
    body = _tensor_body(shape=(1, 4), data=[0.0] * 4) + b" " * (LIMIT + 10)
    response = _post(http, body)
    assert response.status_code == 413
    assert "over the limit" in response.json()["error"]

    def chunks():  # no Content-Length: the limit is enforced while streaming
        yield body[:1000]
        yield body[1000:]

    response = http.post("/v2/models/linear/infer", content=chunks())
    assert response.status_code == 413
    assert_still_serving(client)


def test_request_id_is_echoed_or_made(http):
    response = http.get("/v2/health/live", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    made = http.get("/v2/health/live").headers["x-request-id"]
    assert len(made) == 32


def test_docs_and_no_cors_by_default(http):
    assert http.get("/docs").status_code == 200
    paths = http.get("/openapi.json").json()["paths"]
    assert "/v2/models/{model}/infer" in paths
    response = http.get("/v2/health/live", headers={"Origin": "http://example.com"})
    assert "access-control-allow-origin" not in response.headers


def test_a_model_failing_inside_onnxruntime_is_500_and_the_server_keeps_serving(http, client):
    config = client.get_model_config("fragile")
    assert config["max_batch_size"] == 0  # its output's first axis is fixed: it cannot batch
    assert config["input"][0]["dims"] == [-1, 4]
    ok = http.post("/v2/models/fragile/infer", content=_tensor_body(shape=(3, 4), data=range(12)))
    assert ok.status_code == 200
    assert ok.json()["outputs"][0]["shape"] == [3, 4]
    failed = http.post("/v2/models/fragile/infer", content=_tensor_body())
    assert failed.status_code == 500
    assert "the model failed to run" in failed.json()["error"]
    assert_still_serving(client)
