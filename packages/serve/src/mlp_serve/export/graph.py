"""The serving graph: raw inputs -> fitted preprocessing -> network -> probabilities and labels.

Everything a request needs is in ``model.onnx``; nothing is pickled::

    numeric      FP32   [-1, n]  raw numbers, NaN = missing
      -> Cast(double) -> Where(IsNaN, fill) -> Sub(offset) -> Div(scale) -> Cast(float)
    categorical  BYTES  [-1, k]  raw strings, "" = missing
      -> per column: Gather(column) -> ai.onnx.ml LabelEncoder(string -> slot;
         "" -> fill slot, unseen -> 1) -> OneHot(cardinality) (onehot) | Unsqueeze (index)
    Concat -> net/numeric [, net/categorical] -> network (prefixed "net/") -> net/<output>
      classification: Softmax (multiclass) | Sigmoid -> [1 - p, p] (binary) -> probabilities
                      ArgMax -> LabelEncoder(int -> class label) -> label
      regression:     Squeeze (one value) | Identity -> predictions

Image models take ``image`` as the evaluation transform produces it and get the same head.
Arithmetic on raw numbers runs in float64, as mlp-data fits and applies it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mlp_core.tabular_spec import UNKNOWN_INDEX, TabularPreprocessing

ML_DOMAIN = "ai.onnx.ml"
ML_OPSET = 3
NET_PREFIX = "net/"
BATCH = "batch"


class _Builder:
    """Collects nodes and constant initializers with unique names."""

    def __init__(self, stem: str = "pre") -> None:
        self.stem = stem
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._count = 0

    def name(self, stem: str) -> str:
        self._count += 1
        return f"{self.stem}/{stem}_{self._count}"

    def const(self, stem: str, value: np.ndarray) -> str:
        name = self.name(stem)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(
        self, op: str, inputs: Sequence[str], output: str | None = None, domain: str = "", **attrs
    ) -> str:
        out = output or self.name(op.lower())
        self.nodes.append(
            helper.make_node(op, list(inputs), [out], name=self.name(op), domain=domain, **attrs)
        )
        return out


def tabular_model(
    network: onnx.ModelProto,
    pipeline: TabularPreprocessing,
    *,
    task: str,
    class_labels: Sequence[str] | None,
) -> onnx.ModelProto:
    """The network behind its fitted preprocessing, fed raw features."""
    b = _Builder()
    inputs = []
    parts: list[str] = []
    if pipeline.numeric:
        inputs.append(_tensor("numeric", TensorProto.FLOAT, len(pipeline.numeric)))
        parts.append(_numeric(b, pipeline))
    slots: list[str] = []
    if pipeline.categorical:
        inputs.append(_tensor("categorical", TensorProto.STRING, len(pipeline.categorical)))
        slots = [_slots(b, pipeline, j) for j in range(len(pipeline.categorical))]
    network_inputs = {i.name for i in network.graph.input}
    if pipeline.encoding == "onehot":
        for column, slot in zip(pipeline.categorical, slots):
            depth = b.const("depth", np.array([column.slots], dtype=np.int64))
            values = b.const("onehot_values", np.array([0.0, 1.0], dtype=np.float32))
            parts.append(b.node("OneHot", [slot, depth, values], axis=-1))
    elif slots:
        axes = b.const("axes", np.array([1], dtype=np.int64))
        columns = [b.node("Unsqueeze", [slot, axes]) for slot in slots]
        b.node("Concat", columns, NET_PREFIX + "categorical", axis=1)
    if "numeric" in network_inputs:
        if parts:
            b.node("Concat", parts, NET_PREFIX + "numeric", axis=1)
        else:  # index encoding and no numeric column: the network still takes [B, 0]
            _empty_numeric(b, NET_PREFIX + "categorical")
    return _assemble(network, b, inputs, task=task, class_labels=class_labels)


def image_model(
    network: onnx.ModelProto, *, task: str, class_labels: Sequence[str] | None
) -> onnx.ModelProto:
    """The network fed ``image`` as the evaluation transform makes it, with the serving head."""
    b = _Builder()
    source = network.graph.input[0]
    image = onnx.ValueInfoProto()
    image.CopyFrom(source)
    b.node("Identity", [image.name], NET_PREFIX + image.name)
    return _assemble(network, b, [image], task=task, class_labels=class_labels)


# -- preprocessing ------------------------------------------------------------------------------


def _numeric(b: _Builder, pipeline: TabularPreprocessing) -> str:
    columns = pipeline.numeric
    fill = b.const("fill", np.array([c.fill_value for c in columns], dtype=np.float64))
    offset = b.const("offset", np.array([c.offset for c in columns], dtype=np.float64))
    scale = b.const("scale", np.array([c.scale for c in columns], dtype=np.float64))
    wide = b.node("Cast", ["numeric"], to=TensorProto.DOUBLE)
    missing = b.node("IsNaN", [wide])
    filled = b.node("Where", [missing, fill, wide])
    scaled = b.node("Div", [b.node("Sub", [filled, offset]), scale])
    return b.node("Cast", [scaled], to=TensorProto.FLOAT)


def _slots(b: _Builder, pipeline: TabularPreprocessing, j: int) -> str:
    column = pipeline.categorical[j]
    position = b.const("column", np.array(j, dtype=np.int64))
    raw = b.node("Gather", ["categorical", position], axis=1)
    table = column.lookup()
    keys = ["", *table]
    values = [column.fill_index, *table.values()]
    return b.node(
        "LabelEncoder",
        [raw],
        domain=ML_DOMAIN,
        keys_strings=keys,
        values_int64s=values,
        default_int64=UNKNOWN_INDEX,
    )


def _empty_numeric(b: _Builder, like: str) -> None:
    shape = b.node("Shape", [like], start=0, end=1)
    zero = b.const("zero_width", np.array([0], dtype=np.int64))
    dims = b.node("Concat", [shape, zero], axis=0)
    b.node(
        "ConstantOfShape",
        [dims],
        NET_PREFIX + "numeric",
        value=numpy_helper.from_array(np.array([0.0], dtype=np.float32)),
    )


# -- head and assembly --------------------------------------------------------------------------


def _head(
    b: _Builder, net_output: str, width: int, task: str, class_labels: Sequence[str] | None
) -> list[onnx.ValueInfoProto]:
    if task == "regression":
        if width == 1:
            axes = b.const("squeeze_axes", np.array([1], dtype=np.int64))
            b.node("Squeeze", [net_output, axes], "predictions")
            return [helper.make_tensor_value_info("predictions", TensorProto.FLOAT, [BATCH])]
        b.node("Identity", [net_output], "predictions")
        return [_tensor("predictions", TensorProto.FLOAT, width)]
    if task == "binary":
        positive = b.node("Sigmoid", [net_output])
        one = b.const("one", np.array(1.0, dtype=np.float32))
        negative = b.node("Sub", [one, positive])
        b.node("Concat", [negative, positive], "probabilities", axis=1)
        classes = 2
    else:
        b.node("Softmax", [net_output], "probabilities", axis=1)
        classes = width
    labels = list(class_labels) if class_labels else [str(i) for i in range(classes)]
    index = b.node("ArgMax", ["probabilities"], axis=1, keepdims=0)
    b.node(
        "LabelEncoder",
        [index],
        "label",
        domain=ML_DOMAIN,
        keys_int64s=list(range(classes)),
        values_strings=labels,
        default_string="",
    )
    return [
        _tensor("probabilities", TensorProto.FLOAT, classes),
        helper.make_tensor_value_info("label", TensorProto.STRING, [BATCH]),
    ]


def _assemble(
    network: onnx.ModelProto,
    b: _Builder,
    inputs: list[onnx.ValueInfoProto],
    *,
    task: str,
    class_labels: Sequence[str] | None,
) -> onnx.ModelProto:
    net = onnx.compose.add_prefix(network, NET_PREFIX)
    net_output = net.graph.output[0]
    width = net_output.type.tensor_type.shape.dim[1].dim_value
    head = _Builder("post")
    outputs = _head(head, net_output.name, width, task, class_labels)
    graph = helper.make_graph(
        [*b.nodes, *net.graph.node, *head.nodes],
        "mlp_serving",
        inputs,
        outputs,
        initializer=[*b.initializers, *net.graph.initializer, *head.initializers],
        value_info=list(net.graph.value_info),
    )
    opset = max(17, next(o.version for o in network.opset_import if o.domain in ("", "ai.onnx")))
    imports = [helper.make_opsetid("", opset), helper.make_opsetid(ML_DOMAIN, ML_OPSET)]
    imports += [o for o in network.opset_import if o.domain not in ("", "ai.onnx", ML_DOMAIN)]
    model = helper.make_model(
        graph, opset_imports=imports, producer_name="mlp-serve", ir_version=network.ir_version
    )
    model.functions.extend(net.functions)
    helper.set_model_props(
        model, {"mlp.task": task, "mlp.class_labels": json.dumps(list(class_labels or []))}
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def _tensor(name: str, elem: int, width: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, [BATCH, width])
