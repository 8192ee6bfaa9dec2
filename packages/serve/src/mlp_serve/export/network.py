"""The trained network as an ONNX model: torch export, fp16 conversion, int8 quantisation.

The network is exported alone, with the input and output names of its ``signature()`` and a
dynamic batch axis; :mod:`mlp_serve.export.graph` then wraps it in preprocessing and
postprocessing. Precision changes apply to the network only, so category lookup, imputation and
softmax stay in float32 / exact arithmetic whatever the network runs in.

Exporter: torch's ``torch.export``-based ONNX exporter (``dynamo=True``, the default since
torch 2.9; it folds batch norm into the linear layers). Should it fail on a model, the
TorchScript exporter (``dynamo=False``, deprecated but still shipped) is tried before giving up;
the one used is recorded in the manifest.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from mlp_core.tensors import BATCH_AXIS_NAME
from mlp_models import BaseModel
from mlp_serve.errors import BundleError

MIN_OPSET = 18  # what the dynamo exporter emits; LabelEncoder etc. need >= 17 anyway
EXPORTERS = ("dynamo", "torchscript")


def export_network(model: BaseModel, *, opset: int = MIN_OPSET) -> tuple[onnx.ModelProto, str]:
    """The model's forward as ONNX (float32), and the name of the exporter that made it."""
    model = model.eval().to("cpu")
    errors = []
    for exporter in EXPORTERS:
        try:
            with quiet_exporter():
                proto = _export(model, exporter, opset)
        except Exception as exc:
            errors.append(f"{exporter}: {type(exc).__name__}: {exc}")
            continue
        _check_io(proto, model)
        return proto, exporter
    raise BundleError(
        f"torch.onnx.export failed for model {model.model_name!r}:\n  " + "\n  ".join(errors),
        hint="Run with --debug for the traceback; the model's forward must be exportable.",
    )


def _export(model: BaseModel, exporter: str, opset: int) -> onnx.ModelProto:
    spec = model.signature()
    example = model.example_inputs(2)
    if exporter == "dynamo":
        batch = torch.export.Dim(BATCH_AXIS_NAME, min=1)
        program = torch.onnx.export(
            model,
            example,
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_shapes=tuple({0: batch} for _ in spec.inputs),
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
        assert program is not None  # dynamo=True always returns the program
        return program.model_proto
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        example,
        # torch's annotation omits file objects, which the TorchScript exporter writes to.
        buffer,  # pyright: ignore[reportArgumentType]
        input_names=spec.input_names,
        output_names=spec.output_names,
        dynamic_axes=spec.dynamic_axes,
        opset_version=opset,
        dynamo=False,
    )
    return onnx.load_from_string(buffer.getvalue())


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    # The exporters warn about deprecations and torchvision's unannotated ops: noise for a user.
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _check_io(proto: onnx.ModelProto, model: BaseModel) -> None:
    spec = model.signature()
    names = [i.name for i in proto.graph.input]
    outputs = [o.name for o in proto.graph.output]
    if names != spec.input_names or outputs != spec.output_names:
        raise BundleError(
            f"the exported network has inputs {names} and outputs {outputs}; "
            f"expected {spec.input_names} and {spec.output_names}"
        )
    check_free_batch_axis(proto)


def check_free_batch_axis(proto: onnx.ModelProto) -> None:
    """Every input and output of ``proto`` keeps its first (batch) axis free."""
    for value in (*proto.graph.input, *proto.graph.output):
        first = value.type.tensor_type.shape.dim[0]
        if first.dim_value and not first.dim_param:
            raise BundleError(f"the exported network fixed the batch axis of {value.name!r}")


def opset_of(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


# -- fp16 ---------------------------------------------------------------------------------------


def to_fp16(network: onnx.ModelProto) -> onnx.ModelProto:
    """The network computing in float16 behind float32 inputs and outputs.

    Float initializers, constants, casts and value types become float16; a Cast at each float
    input and output keeps the network's interface float32, so the preprocessing and softmax
    around it are unchanged. (onnxconverter-common does this too; a few dozen lines here spare
    the dependency.)
    """
    model = onnx.ModelProto()
    model.CopyFrom(network)
    graph = model.graph
    kept = _float32_only(graph)
    for index, tensor in enumerate(graph.initializer):
        if tensor.data_type == TensorProto.FLOAT and tensor.name not in kept:
            graph.initializer[index].CopyFrom(_half_tensor(tensor))
    for node in graph.node:
        if any(output in kept for output in node.output):
            continue
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == 1:
                attribute.t.CopyFrom(_half_tensor(attribute.t))
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i == 1:
                attribute.i = TensorProto.FLOAT16
    for value in graph.value_info:
        if value.name not in kept:
            _retype(value, TensorProto.FLOAT, TensorProto.FLOAT16)

    casts_in, casts_out = [], []
    for value in graph.input:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            inner = f"{value.name}__fp16"
            _rename_uses(graph, value.name, inner)
            casts_in.append(helper.make_node("Cast", [value.name], [inner], to=TensorProto.FLOAT16))
    for value in graph.output:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            inner = f"{value.name}__fp16"
            for node in graph.node:
                node.output[:] = [inner if o == value.name else o for o in node.output]
            casts_out.append(helper.make_node("Cast", [inner], [value.name], to=TensorProto.FLOAT))
    nodes = [*casts_in, *graph.node, *casts_out]
    del graph.node[:]
    graph.node.extend(nodes)
    return model


# Inputs that ONNX types as float32 whatever the data: Resize's roi and scales (an upsampling
# layer, as in YOLO's neck, carries its scales as a float constant).
_FLOAT32_INPUTS = {"Resize": (1, 2)}


def _float32_only(graph: onnx.GraphProto) -> set[str]:
    return {
        node.input[position]
        for node in graph.node
        for position in _FLOAT32_INPUTS.get(node.op_type, ())
        if position < len(node.input) and node.input[position]
    }


def _half_tensor(tensor: TensorProto) -> TensorProto:
    values = numpy_helper.to_array(tensor).astype(np.float16)
    return numpy_helper.from_array(values, tensor.name)


def _retype(value: onnx.ValueInfoProto, old: int, new: int) -> None:
    if value.type.tensor_type.elem_type == old:
        value.type.tensor_type.elem_type = new


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if i == old else i for i in node.input]


# -- int8 ---------------------------------------------------------------------------------------


def to_int8(network: onnx.ModelProto) -> onnx.ModelProto:
    """Dynamic int8 quantisation of the network's weights (onnxruntime.quantization).

    ``quantize_dynamic`` quantises MatMul and Conv; torch exports linear layers as Gemm, so
    each Gemm with constant weights is first written as MatMul + Add (same result).
    """
    from mlp_obs.ort_telemetry import disable_telemetry

    disable_telemetry()  # before onnxruntime is imported, which is when it reads the variable
    from onnxruntime.quantization import QuantType, quantize_dynamic

    prepared = _gemm_to_matmul(network)
    with tempfile.TemporaryDirectory(prefix="mlp-quantize-") as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(prepared, source)
        quantize_dynamic(
            source,
            target,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
        )
        return onnx.load(target)


def _gemm_to_matmul(network: onnx.ModelProto) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(network)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    nodes = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = initializers.get(node.input[1]) if node.op_type == "Gemm" else None
        if (
            weight is None
            or attrs.get("transA", 0)
            or attrs.get("alpha", 1.0) != 1.0
            or attrs.get("beta", 1.0) != 1.0
        ):
            nodes.append(node)
            continue
        matrix = numpy_helper.to_array(weight)
        if attrs.get("transB", 0):
            matrix = matrix.T
        name = f"{node.name or node.output[0]}__matmul"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(matrix), name + "_w"))
        has_bias = len(node.input) >= 3 and bool(node.input[2])
        product = name + "_out" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], name + "_w"], [product], name=name))
        if has_bias:
            nodes.append(
                helper.make_node(
                    "Add", [product, node.input[2]], [node.output[0]], name=name + "_add"
                )
            )
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model
