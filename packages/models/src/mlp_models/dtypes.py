"""Torch dtypes for the datatypes of :mod:`mlp_core.tensors` (the KServe v2 names).

mlp-core stays torch-free, so the one place that turns a model signature's ``"FP32"`` into
``torch.float32`` (to build example inputs and check batches) is here.
"""

from __future__ import annotations

import torch

from mlp_core.tensors import TensorSpec

_TORCH_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
    "INT8": torch.int8,
    "INT16": torch.int16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "FP16": torch.float16,
    "FP32": torch.float32,
    "FP64": torch.float64,
}


def torch_dtype(spec: TensorSpec) -> torch.dtype:
    """The torch dtype of ``spec``; a datatype torch has no tensors for is a ValueError."""
    try:
        return _TORCH_DTYPES[spec.datatype]
    except KeyError:
        raise ValueError(
            f"{spec.describe()}: torch has no tensor dtype for datatype {spec.datatype!r}"
        ) from None
