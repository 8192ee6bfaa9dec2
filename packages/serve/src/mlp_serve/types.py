"""Protocol-neutral requests and responses: what REST and gRPC both turn into and out of.

The data plane (:mod:`mlp_serve.dataplane`) works on these; each front end only translates its wire
format (JSON and binary tensors over HTTP, protobuf over gRPC) to and from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlp_core.tensors import TensorSpec


@dataclass
class Tensor:
    name: str
    datatype: str  # KServe v2 name, e.g. "FP32", "BYTES"
    shape: list[int]
    data: np.ndarray  # already shaped; BYTES as dtype object holding bytes
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class RequestedOutput:
    name: str
    binary_data: bool = False  # REST binary extension: return the output as raw bytes
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferRequest:
    inputs: list[Tensor]
    outputs: list[RequestedOutput] = field(default_factory=list)  # empty: every output
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    outputs: list[Tensor]
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str  # "onnxruntime_onnx", as Triton names it
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    parameters: dict[str, Any] = field(default_factory=dict)  # provider in use, task, labels
