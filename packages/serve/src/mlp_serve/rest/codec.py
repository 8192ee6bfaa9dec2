"""The REST wire format of the Open Inference Protocol, to and from the data plane's types.

A request body is a JSON document, optionally followed by binary tensor data (the binary tensor
extension): the ``Inference-Header-Content-Length`` header then gives the JSON's length, and
each input with ``parameters.binary_data_size`` takes that many bytes of the rest, in the order
of the inputs. A response puts an output in binary the same way when the request asks for it
(``binary_data`` on the requested output, or ``binary_data_output`` on the request).

JSON goes through orjson (several times faster than the standard library both ways, which
matters at thousands of requests a second); what orjson refuses and the standard library takes
(``NaN``/``Infinity`` literals, integers beyond 64 bits, non-finite outputs) falls back to
:mod:`json`, so every document carries the values it did before (the text may differ:
``1e-7`` for ``1e-07``, non-ASCII characters as UTF-8 rather than escaped).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import orjson

from mlp_core.tensors import DATATYPES, to_numpy_dtype
from mlp_serve.errors import InvalidInput
from mlp_serve.tensor_codec import array_from_raw, array_to_raw, check_shape_size
from mlp_serve.types import InferRequest, InferResponse, RequestedOutput, Tensor

HEADER_LENGTH = "inference-header-content-length"
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"


def decode_request(body: bytes, header_length: str | None) -> InferRequest:
    """The request in ``body``; every malformation is an :class:`InvalidInput`."""
    json_part, binary = _split_body(body, header_length)
    document = parse_json(json_part)
    inputs_doc = document.get("inputs")
    if not isinstance(inputs_doc, list) or not inputs_doc:
        raise InvalidInput("the request needs a non-empty 'inputs' list")
    offset = 0
    inputs = []
    for position, item in enumerate(inputs_doc):
        tensor, used = _decode_input(item, position, binary, offset)
        inputs.append(tensor)
        offset += used
    if offset != len(binary):
        raise InvalidInput(
            f"{len(binary) - offset} bytes of binary data follow the JSON but no input's "
            "binary_data_size claims them"
        )
    parameters = _mapping(document.get("parameters", {}), "the request's 'parameters'")
    outputs_doc = document.get("outputs", [])
    if not isinstance(outputs_doc, list):
        raise InvalidInput("'outputs' must be a list of {name, parameters} objects")
    default_binary = bool(parameters.get("binary_data_output", False))
    outputs = [_decode_output(item, default_binary) for item in outputs_doc]
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    return InferRequest(inputs=inputs, outputs=outputs, id=request_id, parameters=parameters)


def binary_outputs(request: InferRequest) -> dict[str, bool]:
    """Which outputs the response carries as binary (the rest as JSON); absent: the default."""
    return {o.name: o.binary_data for o in request.outputs}


def encode_response(response: InferResponse, request: InferRequest) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers (content type, and the JSON length when binary)."""
    chosen = binary_outputs(request)
    default_binary = bool(request.parameters.get("binary_data_output", False))
    outputs_doc = []
    chunks: list[bytes] = []
    for tensor in response.outputs:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if chosen.get(tensor.name, default_binary):
            raw = array_to_raw(tensor.data, tensor.datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _json_data(tensor)
        outputs_doc.append(entry)
    document: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs_doc,
    }
    if response.id:
        document["id"] = response.id
    if response.parameters:
        document["parameters"] = response.parameters
    header = dump_json(document)
    if not chunks:
        return header, {"content-type": JSON_TYPE}
    return b"".join([header, *chunks]), {
        "content-type": BINARY_TYPE,
        HEADER_LENGTH: str(len(header)),
    }


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        raise InvalidInput(
            f"Inference-Header-Content-Length {header_length!r} is not a number"
        ) from None
    if not 0 < length <= len(body):
        raise InvalidInput(
            f"Inference-Header-Content-Length {length} does not fit a body of {len(body)} bytes"
        )
    return body[:length], body[length:]


def parse_json(data: bytes) -> dict[str, Any]:
    if not data.strip():
        raise InvalidInput("the request body is empty; expected a JSON inference request")
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        # NaN/Infinity literals or huge integers, which json takes; else json's error message.
        try:
            document = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInput(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidInput("the request body must be a JSON object with an 'inputs' list")
    return document


def dump_json(document: Any) -> bytes:
    """Compact JSON as :func:`json.dumps` writes it (NaN stays NaN, not orjson's null)."""
    try:
        data = orjson.dumps(document)
    except TypeError:  # a type orjson does not write: json says what it thinks of it
        return json.dumps(document, separators=(",", ":")).encode("utf-8")
    if b"null" in data and _has_non_finite(document):
        return json.dumps(document, separators=(",", ":")).encode("utf-8")
    return data


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_non_finite(v) for v in value)
    return False


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be an object")
    return value


def _decode_input(item: Any, position: int, binary: bytes, offset: int) -> tuple[Tensor, int]:
    if not isinstance(item, dict):
        raise InvalidInput(f"inputs[{position}] must be an object with name, datatype, shape")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"inputs[{position}] has no 'name'")
    datatype = item.get("datatype")
    if datatype not in DATATYPES:
        raise InvalidInput(
            f"input {name!r}: datatype {datatype!r} is not one of {', '.join(DATATYPES)}"
        )
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidInput(f"input {name!r}: 'shape' must be a list of non-negative integers")
    check_shape_size(name, datatype, shape)
    parameters = _mapping(item.get("parameters", {}), f"input {name!r}: 'parameters'")
    size = parameters.get("binary_data_size")
    if size is not None:
        if "data" in item:
            raise InvalidInput(f"input {name!r}: has both 'data' and binary_data_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(f"input {name!r}: binary_data_size must be a non-negative integer")
        if offset + size > len(binary):
            raise InvalidInput(
                f"input {name!r}: binary_data_size {size} but only {len(binary) - offset} bytes "
                "of binary data remain: the body is truncated"
            )
        data = array_from_raw(name, datatype, shape, binary[offset : offset + size])
        return Tensor(name, datatype, shape, data, parameters), size
    if "data" not in item:
        raise InvalidInput(f"input {name!r}: no 'data' and no binary_data_size")
    data = json_to_array(name, datatype, item["data"], math.prod(shape))
    return Tensor(name, datatype, shape, data, parameters), 0


def json_to_array(name: str, datatype: str, data: Any, count: int) -> np.ndarray:
    """JSON tensor data, nested or flat, as a flat array of ``datatype``."""
    if not isinstance(data, list):
        data = [data]
    if datatype == "BYTES":
        flat = list(_flatten(data))
        if not all(isinstance(v, str) for v in flat):
            raise InvalidInput(f"input {name!r}: BYTES data in JSON must be strings")
        array = np.empty(len(flat), dtype=object)
        array[:] = [v.encode("utf-8") for v in flat]
        return array
    try:
        raw = np.array(data)
    except ValueError:
        raise InvalidInput(f"input {name!r}: the nested data lists are ragged") from None
    raw = raw.reshape(-1)
    dtype = to_numpy_dtype(datatype)
    kind = raw.dtype.kind
    allowed = {"b": "b", "i": "biu", "u": "biu", "f": "biuf"}[dtype.kind]
    if raw.size and kind not in allowed:
        want = {"b": "true/false", "i": "integers", "u": "integers", "f": "numbers"}[dtype.kind]
        raise InvalidInput(f"input {name!r}: {datatype} data must be {want}, got {raw.dtype.name}")
    if dtype.kind in "iu" and raw.size:
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise InvalidInput(f"input {name!r}: values out of range for {datatype}")
    return raw.astype(dtype)


def _flatten(data: list) -> Any:
    for value in data:
        if isinstance(value, list):
            yield from _flatten(value)
        else:
            yield value


def _decode_output(item: Any, default_binary: bool) -> RequestedOutput:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise InvalidInput("each of 'outputs' must be an object with a 'name'")
    parameters = _mapping(item.get("parameters", {}), f"output {item['name']!r}: 'parameters'")
    if parameters.get("classification"):
        raise InvalidInput(
            f"output {item['name']!r}: the classification extension is not supported; "
            "ask for the output itself and take the top classes from it"
        )
    binary = bool(parameters.get("binary_data", default_binary))
    return RequestedOutput(item["name"], binary_data=binary, parameters=parameters)


def _json_data(tensor: Tensor) -> list:
    if tensor.datatype != "BYTES":
        return np.asarray(tensor.data).reshape(-1).tolist()
    values = []
    for value in np.asarray(tensor.data, dtype=object).flat:
        try:
            values.append(value.decode("utf-8") if isinstance(value, bytes) else str(value))
        except UnicodeDecodeError:
            raise InvalidInput(
                f"output {tensor.name!r} holds bytes that are not UTF-8: ask for it with "
                "binary_data=true"
            ) from None
    return values
