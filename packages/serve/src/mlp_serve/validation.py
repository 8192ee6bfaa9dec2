"""Checks a request against the model's signature before onnxruntime sees it.

onnxruntime's own errors name C++ internals and, for some bad shapes, come from deep inside a
kernel; every problem is caught here instead and reported as an :class:`InvalidInput` that names
the tensor and what the model expects.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from mlp_core.tensors import TensorSpec, to_numpy_dtype
from mlp_serve.errors import InvalidInput
from mlp_serve.types import InferRequest


def describe(tensor: TensorSpec) -> str:
    return f"{tensor.name} ({tensor.datatype} {list(tensor.shape)})"


def validate_inputs(
    request: InferRequest, signature: Sequence[TensorSpec], max_batch_size: int
) -> dict[str, np.ndarray]:
    """The request's inputs as arrays ready for onnxruntime, keyed by name.

    ``max_batch_size`` > 0 means the first axis is the batch axis and may be at most that long
    (and equal across inputs); 0 means the model does not batch.
    """
    expected = {t.name: t for t in signature}
    given: dict[str, np.ndarray] = {}
    for tensor in request.inputs:
        if tensor.name in given:
            raise InvalidInput(f"input {tensor.name!r} is given twice")
        spec = expected.get(tensor.name)
        if spec is None:
            raise InvalidInput(
                f"unknown input {tensor.name!r}; the model takes "
                + ", ".join(describe(t) for t in signature)
            )
        given[tensor.name] = _check_tensor(
            spec, tensor.datatype, list(tensor.shape), tensor.data, max_batch_size
        )
    missing = [describe(t) for t in signature if t.name not in given]
    if missing:
        raise InvalidInput(f"missing input {', '.join(missing)}")
    if max_batch_size > 0 and len(given) > 1:
        sizes = {name: int(array.shape[0]) for name, array in given.items()}
        if len(set(sizes.values())) > 1:
            raise InvalidInput(f"inputs disagree on the batch size (first axis): {sizes}")
    return given


def validate_outputs(requested: Sequence[str], signature: Sequence[TensorSpec]) -> list[str]:
    """The output names to return: the requested ones, or every output when none is asked for."""
    names = [t.name for t in signature]
    if not requested:  # the common case
        return names
    for name in requested:
        if name not in names:
            raise InvalidInput(f"unknown output {name!r}; the model returns {', '.join(names)}")
    if len(set(requested)) != len(requested):
        raise InvalidInput(f"an output is requested twice: {list(requested)}")
    return list(requested) or names


def _check_tensor(
    spec: TensorSpec, datatype: str, shape: list[int], data: np.ndarray, max_batch_size: int
) -> np.ndarray:
    name = spec.name
    if datatype != spec.datatype:
        raise InvalidInput(f"input {name!r}: datatype {datatype}, expected {spec.datatype}")
    _check_shape(spec, shape, max_batch_size)
    array = np.asarray(data)
    count = math.prod(shape)
    if array.size != count:
        raise InvalidInput(
            f"input {name!r}: {array.size} elements given for shape {shape}, which holds {count}"
        )
    array = array.reshape(shape)
    if datatype == "BYTES":
        _check_strings(name, array)
        return array.astype(object, copy=False)
    dtype = to_numpy_dtype(datatype)
    if array.dtype != dtype:
        if not np.can_cast(array.dtype, dtype, casting="same_kind") and array.dtype != np.bool_:
            raise InvalidInput(f"input {name!r}: values of type {array.dtype} are not {datatype}")
        array = array.astype(dtype)
    return array


def _check_shape(spec: TensorSpec, shape: list[int], max_batch_size: int) -> None:
    name, want = spec.name, spec.shape
    for size in shape:  # a loop, not any() over a generator: this runs on every request
        if not isinstance(size, int) or size < 0:
            raise InvalidInput(f"input {name!r}: shape {shape} has a negative or non-integer size")
    if len(shape) != len(want):
        raise InvalidInput(
            f"input {name!r}: shape {shape} has rank {len(shape)}, expected rank {len(want)} "
            f"({want}, -1 any size)"
        )
    for axis, (got, expected) in enumerate(zip(shape, want)):
        if expected >= 0 and got != expected:
            raise InvalidInput(
                f"input {name!r}: shape {shape}, expected {want} (-1 any size): "
                f"axis {axis} must be {expected}"
            )
    if max_batch_size > 0 and not 1 <= shape[0] <= max_batch_size:
        raise InvalidInput(
            f"input {name!r}: batch size {shape[0]} (first axis) must be from 1 to "
            f"{max_batch_size}, the model's max_batch_size; split the request"
        )


def _check_strings(name: str, array: np.ndarray) -> None:
    # onnxruntime's strings are UTF-8; arbitrary bytes would be mangled, not refused, downstream.
    for value in array.flat:
        if isinstance(value, bytes):
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(
                    f"input {name!r}: element {value[:20]!r} is not UTF-8 text, which the model's "
                    "string input needs"
                ) from None
        elif not isinstance(value, str):
            raise InvalidInput(
                f"input {name!r}: BYTES elements must be strings, got {type(value).__name__}"
            )
