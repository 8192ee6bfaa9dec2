"""grpc_codec: Triton's messages (built with tritonclient's own modules) <-> our types."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import InferResult
from tritonclient.grpc import service_pb2 as triton
from tritonclient.utils import serialize_byte_tensor

from mlp_core.tensors import TensorSpec
from mlp_serve._generated import mlp_inference_pb2 as pb
from mlp_serve._generated import mlp_model_config_pb2 as pb_config
from mlp_serve.errors import InvalidInput
from mlp_serve.grpc import codec as grpc_codec
from mlp_serve.types import InferRequest, InferResponse, ModelMetadata, Tensor

TYPED = {
    "BOOL": np.array([[True, False, True]]),
    "INT8": np.array([[-128, 0, 127]], dtype=np.int8),
    "INT16": np.array([[-32768, 5, 32767]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 1, 2**63 - 1]], dtype=np.int64),
    "UINT8": np.array([[0, 1, 255]], dtype=np.uint8),
    "UINT16": np.array([[0, 1, 65535]], dtype=np.uint16),
    "UINT32": np.array([[0, 1, 2**32 - 1]], dtype=np.uint32),
    "UINT64": np.array([[0, 1, 2**64 - 1]], dtype=np.uint64),
    "FP32": np.array([[-1.5, 0.0, 3.25]], dtype=np.float32),
    "FP64": np.array([[-1e300, 0.5, 1e-300]], dtype=np.float64),
    "BYTES": np.array([[b"a", b"", "é".encode()]], dtype=object),
}
RAW = {**TYPED, "FP16": np.array([[-2.0, 0.5, 65504.0]], dtype=np.float16)}


def _raw(array: np.ndarray) -> bytes:
    if array.dtype == object:
        return serialize_byte_tensor(array).item()
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def _ours(message) -> pb.ModelInferRequest:
    """A Triton message as the server receives it: bytes, parsed as ours."""
    return grpc_codec.parse_message(pb.ModelInferRequest, message.SerializeToString())


def _decode_single(datatype: str, shape, **content) -> np.ndarray:
    request = triton.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=shape)
    if "raw" in content:
        request.raw_input_contents.append(content["raw"])
    else:
        for field, values in content.items():
            getattr(tensor.contents, field).extend(values)
    return grpc_codec.decode_infer_request(_ours(request)).inputs[0].data


@pytest.mark.parametrize("datatype", sorted(TYPED))
def test_typed_contents_decode_to_the_datatype(datatype):
    expected = TYPED[datatype]
    field = grpc_codec.CONTENTS_FIELD[datatype]
    data = _decode_single(datatype, [1, 3], **{field: expected.ravel().tolist()})
    assert data.shape == (1, 3)
    if datatype == "BYTES":
        assert data.tolist() == expected.tolist()
    else:
        assert data.dtype == expected.dtype
        np.testing.assert_array_equal(data, expected)


@pytest.mark.parametrize("datatype", sorted(RAW))
def test_raw_contents_decode_to_the_datatype(datatype):
    expected = RAW[datatype]
    data = _decode_single(datatype, [1, 3], raw=_raw(expected))
    assert data.shape == (1, 3)
    if datatype == "BYTES":
        assert data.tolist() == expected.tolist()
    else:
        assert data.dtype == expected.dtype
        np.testing.assert_array_equal(data, expected)


def test_request_keeps_order_ids_parameters_and_requested_outputs():
    request = triton.ModelInferRequest(model_name="m", id="req-7")
    request.parameters["priority"].uint64_param = 3
    request.parameters["flag"].bool_param = True
    request.parameters["name"].string_param = "x"
    request.parameters["ratio"].double_param = 0.5
    request.parameters["timeout"].int64_param = -1
    request.inputs.add(name="b", datatype="INT64", shape=[2]).parameters["p"].int64_param = 9
    request.inputs.add(name="a", datatype="FP32", shape=[1])
    request.raw_input_contents.extend([_raw(np.array([4, 5])), _raw(np.array([1], np.float32))])
    request.outputs.add(name="y").parameters["classification"].int64_param = 2
    decoded = grpc_codec.decode_infer_request(_ours(request))
    assert [t.name for t in decoded.inputs] == ["b", "a"]
    assert decoded.inputs[0].data.tolist() == [4, 5]
    assert decoded.inputs[0].parameters == {"p": 9}
    assert decoded.id == "req-7"
    assert decoded.parameters == {
        "priority": 3,
        "flag": True,
        "name": "x",
        "ratio": 0.5,
        "timeout": -1,
    }
    assert [(o.name, o.parameters) for o in decoded.outputs] == [("y", {"classification": 2})]


def _request(*inputs, raw=()) -> triton.ModelInferRequest:
    request = triton.ModelInferRequest(model_name="m")
    for name, datatype, shape in inputs:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.extend(raw)
    return request


def _with_contents(request, index, **fields):
    for field, values in fields.items():
        getattr(request.inputs[index].contents, field).extend(values)
    return request


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (_request(("x", "FP32", [2, 2]), raw=[bytes(12)]), "12 bytes"),
        (_request(("x", "FP32", [1]), ("z", "FP32", [1]), raw=[bytes(4)]), "2 inputs but 1 raw"),
        (_request(("x", "BF16", [1]), raw=[bytes(2)]), "datatype 'BF16'"),
        (_request(("x", "FP32", [-1, 2]), raw=[bytes(8)]), "must not be negative"),
        (_request(("x", "FP32", [1]), ("x", "FP32", [1]), raw=[bytes(4)] * 2), "more than once"),
        (_request(("x", "BYTES", [2]), raw=[b"\x01\x00\x00\x00a\x05\x00\x00\x00b"]), "claims 5"),
        (_request(("x", "BYTES", [1]), raw=[b"\x01\x00\x00\x00a" * 2]), "2 BYTES elements"),
        (_request(("x", "BYTES", [2]), raw=[b"\x01\x00"]), "length prefix"),
        (_request(("x", "FP32", [2])), "has no data"),
        (_with_contents(_request(("x", "FP32", [2])), 0, fp32_contents=[1.0]), "needs 2"),
        (_with_contents(_request(("x", "FP32", [1])), 0, int64_contents=[1]), "int64_contents"),
        (_with_contents(_request(("x", "FP16", [1])), 0, fp32_contents=[1.0]), "raw_input"),
        (_with_contents(_request(("x", "INT8", [1])), 0, int_contents=[300]), "does not fit"),
        (_with_contents(_request(("x", "UINT16", [1])), 0, uint_contents=[70000]), "not fit"),
        (
            _with_contents(_request(("x", "FP32", [1]), raw=[bytes(4)]), 0, fp32_contents=[1.0]),
            "both typed contents and raw",
        ),
    ],
)
def test_malformed_requests_are_invalid_input(request_, message):
    with pytest.raises(InvalidInput, match=message) as caught:
        grpc_codec.decode_infer_request(_ours(request_))
    assert caught.value.grpc_code == "INVALID_ARGUMENT"


@pytest.mark.parametrize("body", [b"\xff\xff\xff", b"\x0a\x10short", b"\x2a\x05\x0a\x03"])
def test_undecodable_bytes_are_invalid_input(body):
    with pytest.raises(InvalidInput, match="not a valid ModelInferRequest"):
        grpc_codec.parse_message(pb.ModelInferRequest, body)


def test_empty_shape_is_a_scalar_and_zero_dims_are_empty():
    assert _decode_single("FP32", [], fp32_contents=[2.5]).tolist() == 2.5
    assert _decode_single("FP32", [0, 4], raw=b"").shape == (0, 4)


def test_response_reads_back_with_tritonclients_as_numpy():
    outputs = {
        "probabilities": np.array([[0.25, 0.75], [1.0, 0.0]], dtype=np.float32),
        "half": np.array([1.5, -2.0], dtype=np.float16),
        "label": np.array([[7], [-3]], dtype=np.int64),
        "flags": np.array([True, False]),
        "text": np.array([[b"cat"], ["ü".encode()]], dtype=object),
        "scalar": np.array(4.0, dtype=np.float64),
    }
    response = InferResponse(
        model_name="m",
        model_version="3",
        id="r",
        outputs=[
            Tensor(name, "BYTES" if a.dtype == object else _kserve(a.dtype), list(a.shape), a)
            for name, a in outputs.items()
        ],
        parameters={"provider": "CPUExecutionProvider", "n": 2, "big": 2**64 - 1, "x": [1]},
    )
    message = triton.ModelInferResponse.FromString(
        grpc_codec.encode_infer_response(response).SerializeToString()
    )
    assert len(message.raw_output_contents) == len(outputs)
    result = InferResult(message)
    for name, expected in outputs.items():
        actual = result.as_numpy(name)
        assert actual.shape == expected.shape, name
        assert actual.tolist() == expected.tolist(), name
    returned = result.get_response()
    assert (returned.model_name, returned.model_version, returned.id) == ("m", "3", "r")
    assert returned.parameters["provider"].string_param == "CPUExecutionProvider"
    assert returned.parameters["n"].int64_param == 2
    assert returned.parameters["big"].uint64_param == 2**64 - 1
    assert returned.parameters["x"].string_param == "[1]"


def _kserve(dtype) -> str:
    from mlp_core.tensors import from_numpy_dtype

    return from_numpy_dtype(dtype)


def test_request_and_response_round_trip_through_our_own_encoders():
    request = InferRequest(
        inputs=[
            Tensor("x", "FP16", [2], np.array([1, 2], np.float16)),
            Tensor("s", "BYTES", [1], np.array([b"z"], dtype=object)),
        ],
        id="q",
        parameters={"k": "v"},
    )
    message = grpc_codec.encode_infer_request("m", request, "1")
    assert (message.model_name, message.model_version) == ("m", "1")
    decoded = grpc_codec.decode_infer_request(_ours(message))
    assert decoded.inputs[0].data.tolist() == [1.0, 2.0]
    assert decoded.inputs[1].data.tolist() == [b"z"]
    assert decoded.parameters == {"k": "v"}

    response = InferResponse("m", "1", [Tensor("y", "UINT8", [3], np.array([1, 2, 3], np.uint8))])
    back = grpc_codec.decode_infer_response(grpc_codec.encode_infer_response(response))
    assert back.outputs[0].data.dtype == np.uint8
    assert back.outputs[0].data.tolist() == [1, 2, 3]


def test_model_metadata_and_config_encode_as_triton_reads_them():
    metadata = ModelMetadata(
        name="m",
        versions=["1", "2"],
        platform="onnxruntime_onnx",
        inputs=[TensorSpec(name="x", datatype="FP32", shape=(-1, 4))],
        outputs=[TensorSpec(name="y", datatype="BYTES", shape=(-1,))],
        parameters={"task": "regression"},
    )
    theirs = triton.ModelMetadataResponse.FromString(
        grpc_codec.encode_model_metadata(metadata).SerializeToString()
    )
    assert list(theirs.versions) == ["1", "2"]
    assert (theirs.inputs[0].name, list(theirs.inputs[0].shape)) == ("x", [-1, 4])
    assert theirs.outputs[0].datatype == "BYTES"

    config = {
        "name": "m",
        "version": "2",  # not a ModelConfig field: ignored, as Triton's JSON has more than we do
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": 8,
        "input": [{"name": "x", "data_type": "FP16", "dims": [4]}],
        "output": [{"name": "y", "data_type": "TYPE_STRING", "dims": [1]}],
        "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
        "dynamic_batching": {"max_queue_delay_microseconds": 500},
        "parameters": {"provider": {"string_value": "CPU"}, "labels": ["a", "b"], "n": 3},
    }
    message = grpc_codec.encode_model_config(config)
    theirs = triton.ModelConfigResponse.FromString(message.SerializeToString()).config
    assert theirs.input[0].data_type == pb_config.TYPE_FP16 == 10
    assert theirs.output[0].data_type == pb_config.TYPE_STRING == 13
    assert theirs.max_batch_size == 8
    assert theirs.instance_group[0].kind == 2  # KIND_CPU
    assert theirs.dynamic_batching.max_queue_delay_microseconds == 500
    assert theirs.parameters["provider"].string_value == "CPU"
    assert theirs.parameters["labels"].string_value == '["a", "b"]'
    assert theirs.parameters["n"].string_value == "3"
