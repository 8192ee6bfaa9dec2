"""The tensor datatypes of the Open Inference Protocol (KServe v2) and their numpy dtypes."""

from __future__ import annotations

import numpy as np

from mlp_core.errors import ServingError

# KServe v2 name -> numpy dtype. BYTES tensors hold Python bytes objects (dtype object).
_TO_NUMPY: dict[str, np.dtype] = {
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

# onnxruntime's type strings ("tensor(float)") -> KServe v2 names.
_FROM_ONNX = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def to_numpy_dtype(datatype: str) -> np.dtype:
    try:
        return _TO_NUMPY[datatype]
    except KeyError:
        raise ServingError(
            f"unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}"
        ) from None


def from_numpy_dtype(dtype: np.dtype) -> str:
    dtype = np.dtype(dtype)
    name = _FROM_NUMPY.get(dtype)
    if name is not None:
        return name
    if dtype.kind in "OSU":
        return "BYTES"
    raise ServingError(f"numpy dtype {dtype} has no Open Inference Protocol datatype")


def from_onnx_type(onnx_type: str) -> str:
    try:
        return _FROM_ONNX[onnx_type]
    except KeyError:
        raise ServingError(f"ONNX type {onnx_type} is not servable") from None


def element_size(datatype: str) -> int | None:
    """Bytes per element, or None for BYTES (variable length)."""
    return None if datatype == "BYTES" else to_numpy_dtype(datatype).itemsize
