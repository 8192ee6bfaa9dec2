"""onnxruntime's tensor types in the Open Inference Protocol's datatype names.

The protocol's own table (names, numpy dtypes, element sizes) is :mod:`mlp_core.tensors`; what
is the server's alone is reading a loaded model's types, and refusing one it cannot serve.
"""

from __future__ import annotations

from mlp_serve.errors import BundleError

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


def from_onnx_type(onnx_type: str) -> str:
    """``"tensor(float)"`` -> ``"FP32"``; a type the protocol has no name for is a
    :class:`BundleError` (the model cannot be served)."""
    try:
        return _FROM_ONNX[onnx_type]
    except KeyError:
        raise BundleError(f"ONNX type {onnx_type} is not servable") from None
