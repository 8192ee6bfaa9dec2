"""Tensor descriptors: the one description of a model's inputs and outputs.

A model declares its tensors with :class:`TensorSpec`, an exporter writes them into a bundle's
manifest, and a server reads them back to validate requests and answer metadata calls. Datatypes
are the Open Inference Protocol's (KServe v2, Triton's) names (``"FP32"``, ``"INT64"``,
``"BYTES"``), so one spec goes onto the wire unchanged. ``-1`` marks a dynamic dimension; the
batch axis, when a tensor has one, is axis 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator

DYNAMIC = -1
BATCH_AXIS_NAME = "batch"

# KServe v2 name -> numpy dtype. BYTES tensors hold Python bytes objects (dtype object).
_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
DATATYPES = tuple(_TO_NUMPY)
_FROM_NUMPY = {dtype: name for name, dtype in _TO_NUMPY.items() if name != "BYTES"}


class UnknownDatatype(ValueError):
    """A datatype name or numpy dtype with no Open Inference Protocol counterpart."""


def to_numpy_dtype(datatype: str) -> np.dtype[Any]:
    """``"FP32"`` -> ``float32``; an unknown name is an :class:`UnknownDatatype`."""
    try:
        return _TO_NUMPY[datatype]
    except KeyError:
        raise UnknownDatatype(
            f"unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}"
        ) from None


def from_numpy_dtype(dtype: np.dtype[Any] | type) -> str:
    """``float32`` -> ``"FP32"``; strings and objects are ``"BYTES"``."""
    dtype = np.dtype(dtype)
    name = _FROM_NUMPY.get(dtype)
    if name is not None:
        return name
    if dtype.kind in "OSU":
        return "BYTES"
    raise UnknownDatatype(f"numpy dtype {dtype} has no Open Inference Protocol datatype")


def element_size(datatype: str) -> int | None:
    """Bytes per element, or None for BYTES (variable length)."""
    return None if datatype == "BYTES" else to_numpy_dtype(datatype).itemsize


class TensorSpec(BaseModel):
    """One named tensor: its datatype and its shape, ``-1`` where a dimension is free."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    datatype: str
    shape: tuple[int, ...]

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, value: str) -> str:
        if value not in _TO_NUMPY:
            raise ValueError(f"expected one of {', '.join(DATATYPES)}")
        return value

    @field_validator("shape")
    @classmethod
    def _sizes(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(size < DYNAMIC for size in value):
            raise ValueError("sizes are -1 (dynamic) or >= 0")
        return value

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        return _TO_NUMPY[self.datatype]

    @property
    def dynamic_axes(self) -> tuple[int, ...]:
        return tuple(axis for axis, size in enumerate(self.shape) if size == DYNAMIC)

    def concrete_shape(self, batch_size: int) -> tuple[int, ...]:
        """The shape with every dynamic dimension set to ``batch_size``."""
        return tuple(batch_size if size == DYNAMIC else size for size in self.shape)

    def describe(self) -> str:
        """``numeric FP32 [-1, 4]``: for error messages."""
        return f"{self.name} {self.datatype} {list(self.shape)}"


class ModelSignature(BaseModel):
    """A model's inputs in the order ``forward`` takes them and its outputs in the order it
    returns them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """Every dynamic axis named ``"batch"``: the ``dynamic_axes`` of an ONNX export."""
        return {
            spec.name: dict.fromkeys(spec.dynamic_axes, BATCH_AXIS_NAME)
            for spec in (*self.inputs, *self.outputs)
        }
