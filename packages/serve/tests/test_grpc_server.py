"""The gRPC front end against real clients: tritonclient.grpc, raw grpc, health, reflection.

Each server is a real DataPlane with tiny ONNX models on 127.0.0.1 (see grpc_helpers).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton_grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_helpers import GrpcServerThread, raw_call
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from onnx import TensorProto, helper, numpy_helper
from serve_helpers import (
    int_model,
    linear_model,
    slow_model,
    string_model,
    write_bundle,
)
from tritonclient.grpc import service_pb2 as triton
from tritonclient.utils import InferenceServerException

import mlp_serve
from mlp_serve._generated import mlp_inference_pb2 as pb
from mlp_serve.config import BatchingConfig, ServeConfig
from mlp_serve.grpc.inference import SERVICE_NAME

MIB = 1 << 20
TOKEN = "s3cret-token"


def gather_model() -> onnx.ModelProto:
    """INT64 i [-1] -> v [-1] = [10, 20, 30, 40, 50][i]: an index out of range fails in
    onnxruntime itself (after validation), the way a model bug does."""
    values = numpy_helper.from_array(np.array([10, 20, 30, 40, 50], dtype=np.int64), "values")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["values", "i"], ["v"], axis=0)],
        "g",
        [helper.make_tensor_value_info("i", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("v", TensorProto.INT64, [None])],
        initializer=[values],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _config(**overrides) -> ServeConfig:
    base = {
        "grpc_port": 0,
        "http_port": 0,
        "poll_seconds": None,
        "providers": ["CPUExecutionProvider"],
    }
    return ServeConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    write_bundle(repo, "linear", 1, linear_model(), class_labels=["a", "b", "c"])
    write_bundle(repo, "ints", 1, int_model(), manifest=False)
    write_bundle(repo, "strings", 1, string_model(), manifest=False)
    write_bundle(repo, "gather", 1, gather_model(), manifest=False)
    with GrpcServerThread(repo, _config()) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with triton_grpc.InferenceServerClient(server.address) as triton_client:
        yield triton_client


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.address) as open_channel:
        yield open_channel


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _infer_linear(client, x: np.ndarray, **kwargs):
    tensor = triton_grpc.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer("linear", [tensor], **kwargs)


def _assert_still_serving(client) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    (expected,) = _session(linear_model()).run(["y"], {"x": x})
    np.testing.assert_allclose(_infer_linear(client, x).as_numpy("y"), expected, rtol=1e-5)


def _status(caught: pytest.ExceptionInfo) -> str:
    return caught.value.status()


# --- the protocol through tritonclient --------------------------------------------------------


def test_health_and_metadata_through_tritonclient(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("linear")
    assert client.is_model_ready("linear", "1")
    assert not client.is_model_ready("linear", "7")
    assert not client.is_model_ready("no-such-model")

    metadata = client.get_server_metadata()
    assert metadata.name == "mlp"
    assert metadata.version == mlp_serve.__version__
    assert "model_configuration" in metadata.extensions

    model = client.get_model_metadata("linear")
    assert (model.name, list(model.versions), model.platform) == (
        "linear",
        ["1"],
        "onnxruntime_onnx",
    )
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [("x", "FP32", [-1, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in model.outputs] == [("y", "FP32", [-1, 3])]


def test_model_config_through_tritonclient(client):
    config = client.get_model_config("linear").config
    assert isinstance(config, triton_grpc.model_config_pb2.ModelConfig)
    assert (config.name, config.platform, config.backend) == (
        "linear",
        "onnxruntime_onnx",
        "onnxruntime",
    )
    assert config.max_batch_size == 64
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("x", triton_grpc.model_config_pb2.TYPE_FP32, [4])
    ]
    assert config.output[0].data_type == triton_grpc.model_config_pb2.TYPE_FP32
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert config.parameters["execution_provider"].string_value == "CPUExecutionProvider"
    strings = client.get_model_config("strings", as_json=True)["config"]
    assert strings["input"][0]["data_type"] == "TYPE_STRING"


def test_fp32_inference_equals_onnxruntime(client):
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    (expected,) = _session(linear_model()).run(["y"], {"x": x})
    result = _infer_linear(client, x, request_id="abc")
    np.testing.assert_allclose(result.as_numpy("y"), expected, rtol=1e-5, atol=1e-6)
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("linear", "1", "abc")


def test_int64_inference_and_requested_outputs(client):
    a = np.array([[1, 2], [-3, 2**40]], dtype=np.int64)
    doubled, total = _session(int_model()).run(["doubled", "total"], {"a": a})
    tensor = triton_grpc.InferInput("a", [2, 2], "INT64")
    tensor.set_data_from_numpy(a)
    both = client.infer("ints", [tensor])
    np.testing.assert_array_equal(both.as_numpy("doubled"), doubled)
    np.testing.assert_array_equal(both.as_numpy("total"), total)
    only = client.infer("ints", [tensor], outputs=[triton_grpc.InferRequestedOutput("total")])
    assert only.as_numpy("doubled") is None
    np.testing.assert_array_equal(only.as_numpy("total"), total)


def test_bytes_inference_equals_onnxruntime(client):
    text = np.array([["cat"], ["émeu"], ["unseen"]], dtype=object)
    echo, ids = _session(string_model()).run(["echo", "id"], {"text": text})
    tensor = triton_grpc.InferInput("text", [3, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[s.encode()] for s in text[:, 0]], dtype=object))
    result = client.infer("strings", [tensor])
    assert result.as_numpy("echo").tolist() == [[s.encode()] for s in echo[:, 0]]
    np.testing.assert_array_equal(result.as_numpy("id"), ids)
    assert result.as_numpy("id").ravel().tolist() == [0, 2, -1]


def test_request_over_4_mib_succeeds_with_the_default_config(client):
    assert ServeConfig().grpc_max_message_bytes > 4 * MIB
    rows = [[bytes([65 + i % 26]) * 80_000] for i in range(64)]  # 5.1 MB each way
    tensor = triton_grpc.InferInput("text", [64, 1], "BYTES")
    tensor.set_data_from_numpy(np.array(rows, dtype=object))
    result = client.infer("strings", [tensor])
    assert result.as_numpy("echo").tolist() == rows
    assert (result.as_numpy("id") == -1).all()


def test_tritonclient_and_our_messages_share_one_process(client):
    # Both register their files in the default pool: distinct names, no clash, both usable.
    assert "tritonclient.grpc.service_pb2" in sys.modules
    assert "mlp_serve._generated.mlp_inference_pb2" in sys.modules
    pool = descriptor_pool.Default()
    assert pool.FindServiceByName("inference.GRPCInferenceService").file.package == "inference"
    assert pool.FindMessageTypeByName("mlp.serve.v2.ModelInferRequest") is not None
    _assert_still_serving(client)


# --- typed contents and raw bytes over plain grpc ---------------------------------------------


def test_typed_contents_requests(channel):
    request = pb.ModelInferRequest(model_name="linear", model_version="1")
    x = request.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    x.contents.fp32_contents.extend([0.5, -1, 2, 3, 4, 5, 6, 7])
    request.outputs.add(name="y")
    body = raw_call(channel, "ModelInfer", request.SerializeToString())
    result = triton_grpc.InferResult(triton.ModelInferResponse.FromString(body))
    array = np.array([[0.5, -1, 2, 3], [4, 5, 6, 7]], dtype=np.float32)
    (expected,) = _session(linear_model()).run(["y"], {"x": array})
    np.testing.assert_allclose(result.as_numpy("y"), expected, rtol=1e-5)

    request = pb.ModelInferRequest(model_name="ints")
    a = request.inputs.add(name="a", datatype="INT64", shape=[1, 2])
    a.contents.int64_contents.extend([7, 2**50])
    response = pb.ModelInferResponse.FromString(
        raw_call(channel, "ModelInfer", request.SerializeToString())
    )
    totals = triton_grpc.InferResult(
        triton.ModelInferResponse.FromString(response.SerializeToString())
    )
    assert totals.as_numpy("total").tolist() == [[7 + 2**50]]

    request = pb.ModelInferRequest(model_name="strings")
    text = request.inputs.add(name="text", datatype="BYTES", shape=[2, 1])
    text.contents.bytes_contents.extend([b"dog", "émeu".encode()])
    body = raw_call(channel, "ModelInfer", request.SerializeToString())
    result = triton_grpc.InferResult(triton.ModelInferResponse.FromString(body))
    assert result.as_numpy("id").ravel().tolist() == [1, 2]


def test_every_method_answers_on_its_published_path(channel):
    def call(method, request, response_class):
        return response_class.FromString(raw_call(channel, method, request.SerializeToString()))

    assert call("ServerLive", pb.ServerLiveRequest(), pb.ServerLiveResponse).live
    assert call("ServerReady", pb.ServerReadyRequest(), pb.ServerReadyResponse).ready
    ready = call("ModelReady", pb.ModelReadyRequest(name="ints"), pb.ModelReadyResponse)
    assert ready.ready
    meta = call("ServerMetadata", pb.ServerMetadataRequest(), pb.ServerMetadataResponse)
    assert meta.name == "mlp"
    model = call("ModelMetadata", pb.ModelMetadataRequest(name="ints"), pb.ModelMetadataResponse)
    assert [o.name for o in model.outputs] == ["doubled", "total"]
    config = call("ModelConfig", pb.ModelConfigRequest(name="ints"), pb.ModelConfigResponse)
    assert config.config.input[0].data_type == 9  # TYPE_INT64


# --- errors: the right code, a clear message, and the server keeps serving --------------------


def test_unknown_model_is_not_found(client):
    tensor = triton_grpc.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 4), np.float32))
    with pytest.raises(InferenceServerException, match="no-such-model") as caught:
        client.infer("no-such-model", [tensor])
    assert _status(caught) == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("no-such-model")
    assert _status(caught) == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_config("no-such-model")
    assert _status(caught) == "StatusCode.NOT_FOUND"
    _assert_still_serving(client)


@pytest.mark.parametrize(
    ("name", "datatype", "array", "message"),
    [
        ("x", "INT64", np.zeros((1, 4), np.int64), "INT64"),  # wrong datatype
        ("x", "FP32", np.zeros((2, 5), np.float32), r"\[2, 5\]"),  # wrong shape
        ("z", "FP32", np.zeros((1, 4), np.float32), "'z'"),  # not an input: x is missing
        ("x", "FP32", np.zeros((65, 4), np.float32), "65"),  # over max_batch_size
    ],
)
def test_bad_inputs_are_invalid_argument(client, name, datatype, array, message):
    tensor = triton_grpc.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    with pytest.raises(InferenceServerException, match=message) as caught:
        client.infer("linear", [tensor])
    assert _status(caught) == "StatusCode.INVALID_ARGUMENT"
    _assert_still_serving(client)


def test_unknown_output_is_invalid_argument(client):
    tensor = triton_grpc.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 4), np.float32))
    with pytest.raises(InferenceServerException, match="nope") as caught:
        client.infer("linear", [tensor], outputs=[triton_grpc.InferRequestedOutput("nope")])
    assert _status(caught) == "StatusCode.INVALID_ARGUMENT"


@pytest.mark.parametrize(
    "body", [b"\xff\xff\xff\xff", b"\x0a\x40too short", b"\x2a\x05\x0a\x03\xff\xff"]
)
def test_garbage_protobuf_is_invalid_argument(server, channel, client, body):
    with pytest.raises(grpc.RpcError) as caught:
        raw_call(channel, "ModelInfer", body)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid ModelInferRequest" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        raw_call(channel, "ModelMetadata", body)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _assert_still_serving(client)
    rejected = server.dataplane.registry.get_sample_value(
        "mlp_inference_requests_total",
        {"model": "_unknown", "version": "", "protocol": "grpc", "status": "invalid_input"},
    )
    assert rejected is not None and rejected >= 1


def test_raw_size_mismatch_is_invalid_argument(channel, client):
    request = pb.ModelInferRequest(model_name="linear")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(bytes(15))
    with pytest.raises(grpc.RpcError) as caught:
        raw_call(channel, "ModelInfer", request.SerializeToString())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "15 bytes" in caught.value.details()
    _assert_still_serving(client)


def test_a_model_failing_inside_onnxruntime_is_internal_and_the_server_goes_on(client):
    indices = triton_grpc.InferInput("i", [2], "INT64")
    indices.set_data_from_numpy(np.array([1, 4], np.int64))
    assert client.infer("gather", [indices]).as_numpy("v").tolist() == [20, 50]
    indices.set_data_from_numpy(np.array([1, 99], np.int64))
    with pytest.raises(InferenceServerException, match="failed to run") as caught:
        client.infer("gather", [indices])
    assert _status(caught) == "StatusCode.INTERNAL"
    _assert_still_serving(client)


def test_metrics_count_grpc_requests(server, client):
    labels = {"model": "linear", "version": "1", "protocol": "grpc", "status": "ok"}
    before = server.dataplane.registry.get_sample_value("mlp_inference_requests_total", labels) or 0
    _assert_still_serving(client)
    after = server.dataplane.registry.get_sample_value("mlp_inference_requests_total", labels)
    assert after == before + 1


# --- health and reflection --------------------------------------------------------------------


def test_health_service(channel):
    health = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    for service in ("", SERVICE_NAME, "linear"):
        response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert response.status == serving, service
    with pytest.raises(grpc.RpcError) as caught:
        health.Check(health_pb2.HealthCheckRequest(service="no-such-model"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    stream = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert next(stream).status == serving
    stream.cancel()


def test_reflection_describes_a_callable_service(channel):
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= services
    # What grpcurl does: build the messages from reflection alone, then call the method.
    pool = descriptor_pool.DescriptorPool(database)
    method = pool.FindServiceByName(SERVICE_NAME).methods_by_name["ModelInfer"]
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    request = request_class(model_name="ints")
    tensor = request.inputs.add(name="a", datatype="INT64", shape=[1, 2])
    tensor.contents.int64_contents.extend([20, 22])
    call = channel.unary_unary(
        f"/{SERVICE_NAME}/{method.name}",
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    response = call(request, timeout=30)
    names = [o.name for o in response.outputs]
    total = np.frombuffer(response.raw_output_contents[names.index("total")], "<i8")
    assert total.tolist() == [42]


# --- servers with their own configuration -----------------------------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    repo = tmp_path_factory.mktemp("guarded")
    write_bundle(repo, "linear", 1, linear_model(), manifest=False)
    config = _config(auth_token=TOKEN, grpc_max_message_bytes=1 * MIB)
    with GrpcServerThread(repo, config) as running:
        yield running


def test_bearer_token_is_required(guarded):
    x = np.ones((1, 4), np.float32)
    with triton_grpc.InferenceServerClient(guarded.address) as client:
        assert client.is_server_live()  # probes need no token
        for headers in (None, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
            with pytest.raises(InferenceServerException) as caught:
                _infer_linear(client, x, headers=headers)
            assert _status(caught) == "StatusCode.UNAUTHENTICATED", headers
            with pytest.raises(InferenceServerException) as caught:
                client.get_model_metadata("linear", headers=headers)
            assert _status(caught) == "StatusCode.UNAUTHENTICATED", headers
        good = {"authorization": f"Bearer {TOKEN}"}
        (expected,) = _session(linear_model()).run(["y"], {"x": x})
        np.testing.assert_allclose(
            _infer_linear(client, x, headers=good).as_numpy("y"), expected, rtol=1e-5
        )
        assert client.get_model_metadata("linear", headers=good).name == "linear"
    with grpc.insecure_channel(guarded.address) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert check.status == health_pb2.HealthCheckResponse.SERVING


def test_message_over_the_configured_limit_is_resource_exhausted(guarded):
    good = {"authorization": f"Bearer {TOKEN}"}
    with triton_grpc.InferenceServerClient(guarded.address) as client:
        big = np.zeros((64, 4), np.float32)
        tensor = triton_grpc.InferInput("x", [64, 4], "FP32")
        tensor.set_data_from_numpy(big)
        request = pb.ModelInferRequest(model_name="linear", id="x" * (2 * MIB))  # 2 MiB > 1 MiB
        with grpc.insecure_channel(guarded.address) as channel, pytest.raises(grpc.RpcError) as c:
            raw_call(
                channel,
                "ModelInfer",
                request.SerializeToString(),
                (("authorization", f"Bearer {TOKEN}"),),
            )
        assert c.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # The server goes on, for requests within the limit.
        assert client.infer("linear", [tensor], headers=good).as_numpy("y").shape == (64, 3)


def test_full_queue_is_unavailable_and_the_server_recovers(tmp_path: Path):
    write_bundle(tmp_path, "slow", 1, slow_model(), manifest=False)
    batching = BatchingConfig(max_batch_size=1, max_queue_size=1, max_queue_delay_ms=0)
    with (
        GrpcServerThread(tmp_path, _config(batching=batching)) as running,
        triton_grpc.InferenceServerClient(running.address) as client,
    ):
        x = np.ones((1, 4), np.float32)
        tensor = triton_grpc.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(x)
        outcomes: list[tuple[object, object]] = []
        done = threading.Event()
        total = 24

        def callback(result, error):
            outcomes.append((result, error))
            if len(outcomes) == total:
                done.set()

        for _ in range(total):
            client.async_infer("slow", [tensor], callback)
        assert done.wait(60), f"{len(outcomes)} of {total} answered"
        errors = [e for _, e in outcomes if e is not None]
        results = [r for r, e in outcomes if e is None]
        assert errors, "no request was refused although the queue holds one"
        assert {e.status() for e in errors} == {"StatusCode.UNAVAILABLE"}
        assert all("queue is full" in e.message() for e in errors)
        assert results, "no request got through"
        for result in results:
            np.testing.assert_allclose(result.as_numpy("y"), x)
        np.testing.assert_allclose(client.infer("slow", [tensor]).as_numpy("y"), x)
