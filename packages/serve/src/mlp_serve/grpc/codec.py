"""Open Inference Protocol protobuf messages <-> mlp-serve's protocol-neutral types.

Tensors travel as Triton sends them: ``raw_input_contents`` / ``raw_output_contents`` hold one
entry per tensor, in tensor order, little-endian and row-major; BYTES elements each carry a
4-byte little-endian length prefix. Requests may instead use the typed ``contents`` fields
(``fp32_contents`` and so on); FP16 has no typed field and travels raw only. Responses are
always raw, which is what Triton does and what ``tritonclient``'s ``as_numpy`` reads first.

Everything wrong with a request (undecodable bytes, counts, sizes, datatypes) is an
:class:`~mlp_serve.errors.InvalidInput` naming the tensor, never a crash.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import numpy as np
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from mlp_core.errors import ServingError
from mlp_core.tensors import DATATYPES, TensorSpec, to_numpy_dtype
from mlp_serve._generated import mlp_inference_pb2 as pb
from mlp_serve._generated import mlp_model_config_pb2 as pb_config
from mlp_serve.errors import InvalidInput
from mlp_serve.tensor_codec import array_from_raw, array_to_raw, check_shape_size
from mlp_serve.types import (
    InferRequest,
    InferResponse,
    ModelMetadata,
    RequestedOutput,
    Tensor,
)

M = TypeVar("M", bound=Message)

# The typed contents field of each datatype; narrow integers ride in the 32-bit fields.
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_FIELD_DTYPE = {
    "bool_contents": np.dtype(np.bool_),
    "int_contents": np.dtype(np.int32),
    "int64_contents": np.dtype(np.int64),
    "uint_contents": np.dtype(np.uint32),
    "uint64_contents": np.dtype(np.uint64),
    "fp32_contents": np.dtype(np.float32),
    "fp64_contents": np.dtype(np.float64),
}
_ALL_CONTENTS_FIELDS = tuple(pb.InferTensorContents.DESCRIPTOR.fields_by_name)
_KNOWN_DATATYPES = frozenset(DATATYPES)

# model_config.proto's DataType names for KServe v2 datatypes (BYTES is Triton's TYPE_STRING).
CONFIG_DATATYPE = {name: "TYPE_STRING" if name == "BYTES" else f"TYPE_{name}" for name in DATATYPES}


def parse_message(message_class: type[M], body: bytes) -> M:
    """``body`` decoded as ``message_class``; undecodable bytes are an InvalidInput."""
    message = message_class()
    try:
        message.ParseFromString(body)
    except (DecodeError, ValueError, TypeError) as exc:
        raise InvalidInput(
            f"the request body is not a valid {message_class.DESCRIPTOR.name} message: {exc}",
            hint="Send a protobuf message of the Open Inference Protocol (tritonclient does).",
        ) from None
    return message


# --- requests ---------------------------------------------------------------------------------


def decode_infer_request(message: pb.ModelInferRequest) -> InferRequest:
    """The protocol-neutral request of a ModelInferRequest (model name and version aside)."""
    # Each field read from a protobuf message builds a new Python object: read once each.
    raw = message.raw_input_contents
    tensors = message.inputs
    if raw and len(raw) != len(tensors):
        raise InvalidInput(
            f"the request has {len(tensors)} inputs but {len(raw)} raw_input_contents; "
            "when raw contents are used, every input needs exactly one, in input order"
        )
    seen: set[str] = set()
    inputs = []
    for index, tensor in enumerate(tensors):
        name = tensor.name
        if name in seen:
            raise InvalidInput(f"input {name!r} appears more than once in the request")
        seen.add(name)
        datatype, shape = _checked_signature(name, tensor.datatype, tensor.shape)
        if raw:
            if tensor.HasField("contents") and any(
                len(getattr(tensor.contents, field)) for field in _ALL_CONTENTS_FIELDS
            ):
                raise InvalidInput(
                    f"input {name!r} has both typed contents and raw_input_contents; "
                    "a request uses one or the other for all its inputs"
                )
            data = array_from_raw(name, datatype, shape, raw[index])
        else:
            data = _decode_contents(name, datatype, shape, tensor.contents)
        inputs.append(Tensor(name, datatype, shape, data, decode_parameters(tensor.parameters)))
    outputs = [
        RequestedOutput(output.name, parameters=decode_parameters(output.parameters))
        for output in message.outputs
    ]
    return InferRequest(inputs, outputs, message.id, decode_parameters(message.parameters))


def _checked_signature(name: str, datatype: str, shape: Iterable[int]) -> tuple[str, list[int]]:
    if datatype not in _KNOWN_DATATYPES:
        raise InvalidInput(
            f"input {name!r} has datatype {datatype!r}; expected one of {', '.join(DATATYPES)}"
        )
    dims = list(shape)  # protobuf gives ints already
    if dims and min(dims) < 0:
        raise InvalidInput(f"input {name!r} has shape {dims}: dimensions must not be negative")
    check_shape_size(name, datatype, dims)
    return datatype, dims


def _decode_contents(
    name: str, datatype: str, shape: list[int], contents: pb.InferTensorContents
) -> np.ndarray:
    count = math.prod(shape)
    field = CONTENTS_FIELD.get(datatype)
    present = [f for f in _ALL_CONTENTS_FIELDS if len(getattr(contents, f))]
    if field is None:
        raise InvalidInput(
            f"input {name!r} is {datatype}, which has no typed contents field; "
            "send it in raw_input_contents"
        )
    stray = [f for f in present if f != field]
    if stray:
        raise InvalidInput(
            f"input {name!r} is {datatype} but carries contents.{', contents.'.join(stray)}; "
            f"{datatype} elements go in contents.{field}"
        )
    values = getattr(contents, field)
    if len(values) != count:
        if not present and count:
            raise InvalidInput(
                f"input {name!r} has no data: give it raw_input_contents or contents.{field}"
            )
        raise InvalidInput(
            f"input {name!r}: contents.{field} holds {len(values)} elements, but shape {shape} "
            f"needs {count}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        for i, value in enumerate(values):
            array[i] = bytes(value)
        return array.reshape(shape)
    wide = np.fromiter(values, dtype=_FIELD_DTYPE[field], count=count)
    target = to_numpy_dtype(datatype)
    if target != wide.dtype and target.kind in "iu" and count:
        info = np.iinfo(target)
        low, high = int(wide.min()), int(wide.max())
        if low < info.min or high > info.max:
            raise InvalidInput(
                f"input {name!r}: contents.{field} holds {low if low < info.min else high}, "
                f"which does not fit {datatype}"
            )
    return wide.astype(target, copy=False).reshape(shape)


def encode_infer_request(
    model_name: str, request: InferRequest, model_version: str = ""
) -> pb.ModelInferRequest:
    """A ModelInferRequest with raw contents, as tritonclient builds it (for Python clients)."""
    message = pb.ModelInferRequest(
        model_name=model_name, model_version=model_version, id=request.id
    )
    encode_parameters(message.parameters, request.parameters)
    for tensor in request.inputs:
        entry = message.inputs.add(name=tensor.name, datatype=tensor.datatype)
        entry.shape.extend(int(d) for d in np.shape(tensor.data))
        encode_parameters(entry.parameters, tensor.parameters)
        message.raw_input_contents.append(array_to_raw(np.asarray(tensor.data), tensor.datatype))
    for output in request.outputs:
        encode_parameters(message.outputs.add(name=output.name).parameters, output.parameters)
    return message


# --- responses --------------------------------------------------------------------------------


def encode_infer_response(response: InferResponse) -> pb.ModelInferResponse:
    """A ModelInferResponse carrying every output in ``raw_output_contents``."""
    message = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=str(response.model_version),
        id=response.id,
    )
    if response.parameters:  # reading message.parameters alone builds a map object
        encode_parameters(message.parameters, response.parameters)
    entries, contents = message.outputs, message.raw_output_contents
    for tensor in response.outputs:
        data = np.asarray(tensor.data)
        entry = entries.add(name=tensor.name, datatype=tensor.datatype, shape=data.shape)
        if tensor.parameters:
            encode_parameters(entry.parameters, tensor.parameters)
        contents.append(array_to_raw(data, tensor.datatype))
    return message


def decode_infer_response(message: pb.ModelInferResponse) -> InferResponse:
    """The protocol-neutral response of a ModelInferResponse (raw or typed contents)."""
    raw = message.raw_output_contents
    outputs = []
    for index, tensor in enumerate(message.outputs):
        datatype, shape = _checked_signature(tensor.name, tensor.datatype, tensor.shape)
        if index < len(raw):
            data = array_from_raw(tensor.name, datatype, shape, raw[index])
        else:
            data = _decode_contents(tensor.name, datatype, shape, tensor.contents)
        outputs.append(
            Tensor(tensor.name, datatype, shape, data, decode_parameters(tensor.parameters))
        )
    return InferResponse(
        model_name=message.model_name,
        model_version=message.model_version,
        outputs=outputs,
        id=message.id,
        parameters=decode_parameters(message.parameters),
    )


# --- parameters -------------------------------------------------------------------------------


def decode_parameters(parameters: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    decoded: dict[str, Any] = {}
    if not parameters:  # the common case, and iterating an empty protobuf map is not free
        return decoded
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is not None:
            decoded[key] = getattr(parameter, choice)
    return decoded


def encode_parameters(target: Any, parameters: Mapping[str, Any]) -> None:
    """Fill a ``map<string, InferParameter>`` field; values beyond its types go as JSON text."""
    if not parameters:
        return
    for key, value in parameters.items():
        entry = target[str(key)]
        if isinstance(value, bool | np.bool_):
            entry.bool_param = bool(value)
        elif isinstance(value, int | np.integer):
            if int(value) >= 1 << 63:
                entry.uint64_param = int(value)
            else:
                entry.int64_param = int(value)
        elif isinstance(value, float | np.floating):
            entry.double_param = float(value)
        elif isinstance(value, str):
            entry.string_param = value
        else:
            entry.string_param = json.dumps(value, default=str)


# --- metadata and configuration ---------------------------------------------------------------


def encode_server_metadata(metadata: Mapping[str, Any]) -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(
        name=str(metadata.get("name", "")),
        version=str(metadata.get("version", "")),
        extensions=[str(e) for e in metadata.get("extensions", ())],
    )


def encode_model_metadata(metadata: ModelMetadata) -> pb.ModelMetadataResponse:
    def tensors(items: list[TensorSpec]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
        return [
            pb.ModelMetadataResponse.TensorMetadata(
                name=t.name, datatype=t.datatype, shape=[int(d) for d in t.shape]
            )
            for t in items
        ]

    return pb.ModelMetadataResponse(
        name=metadata.name,
        versions=[str(v) for v in metadata.versions],
        platform=metadata.platform,
        inputs=tensors(metadata.inputs),
        outputs=tensors(metadata.outputs),
    )


def encode_model_config(config: Mapping[str, Any]) -> pb.ModelConfigResponse:
    """A ModelConfigResponse from the data plane's Triton-style config dict.

    Datatypes may be given as Triton's ``TYPE_FP32`` or KServe's ``FP32``; parameters as
    Triton's ``{"string_value": ...}`` or plain values. Keys Triton has and this proto leaves
    out are ignored.
    """
    document = dict(config)
    for key in ("input", "output"):
        document[key] = [_config_tensor(t) for t in document.get(key) or ()]
    parameters = document.get("parameters") or {}
    document["parameters"] = {
        str(k): v if isinstance(v, Mapping) else {"string_value": _parameter_text(v)}
        for k, v in parameters.items()
    }
    message = pb_config.ModelConfig()
    try:
        json_format.ParseDict(document, message, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise ServingError(f"the model config cannot be expressed in protobuf: {exc}") from None
    return pb.ModelConfigResponse(config=message)


def _config_tensor(tensor: Mapping[str, Any]) -> dict[str, Any]:
    entry = dict(tensor)
    data_type = entry.get("data_type")
    if isinstance(data_type, str) and data_type in CONFIG_DATATYPE:
        entry["data_type"] = CONFIG_DATATYPE[data_type]
    return entry


def _parameter_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)
