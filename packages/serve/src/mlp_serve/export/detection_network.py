"""A YOLO network (ultralytics' ``DetectionModel``) as ONNX and TorchScript: the raw head only.

The exported graph is ``images`` FP32 ``[B, 3, H, W]`` (letterboxed, scaled to [0, 1]) ->
``output0`` FP32 ``[B, 4 + nc, A]``: per anchor the box centre, width and height in input pixels,
then one score per class (after the sigmoid). No NMS in the graph: the server runs it in numpy
(:mod:`mlp_serve.detection`), so confidence, IoU and max detections vary per request and a batch
has no size cap (ultralytics' ``nms=True`` export unrolls its per-image loop to the export batch:
images past it get no boxes, see the mlp-serve README).

The network is a fused copy (convolution and batch norm folded, as ultralytics' own export and
predict do); the trained model is left untouched. Exporter: torch's TorchScript-based ONNX
exporter first, as ultralytics exports (0.6 s for yolov8n; the ``torch.export`` one takes ~8 s
and needs the head's ``dynamic`` switch to keep the batch axis free), then ``torch.export``
should the first fail.
"""

from __future__ import annotations

import copy
import io
from typing import Any

import onnx
import torch

from mlp_serve.errors import BundleError
from mlp_serve.export.network import MIN_OPSET, check_free_batch_axis, quiet_exporter

INPUT = "images"
OUTPUT = "output0"  # ultralytics' name for the raw head (its Triton client reads it)
EXPORTERS = ("torchscript", "dynamo")


class RawHead(torch.nn.Module):
    """The network's evaluation forward, first element only: the raw head ``[B, 4 + nc, A]``."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.network(images)
        return out[0] if isinstance(out, (tuple, list)) else out


def raw_head(network: torch.nn.Module) -> RawHead:
    """A fused, evaluation-mode copy of ``network`` that returns the raw head; checks the head."""
    head = _detect_head(network)
    if getattr(head, "end2end", False):
        raise BundleError(
            "the network has an end-to-end (NMS-free) head, as YOLO26 and YOLOv10: its output "
            "is already filtered boxes, not the raw head the server's NMS takes",
            hint="Train with an NMS head architecture such as yolov8n.yaml or yolo11n.yaml.",
        )
    if getattr(head, "xyxy", False):
        raise BundleError("the network's head gives x1, y1, x2, y2 boxes; the server takes xywh")
    fused: Any = copy.deepcopy(network).float().eval().to("cpu")
    if hasattr(fused, "fuse"):
        fused = fused.fuse(verbose=False)
    for parameter in fused.parameters():
        parameter.requires_grad_(False)
    return RawHead(fused).eval()


def num_classes(network: torch.nn.Module) -> int:
    return int(_detect_head(network).nc)


def _detect_head(network: torch.nn.Module) -> Any:
    layers = getattr(network, "model", None)
    head = layers[-1] if isinstance(layers, torch.nn.Sequential) and len(layers) else None
    if head is None or not hasattr(head, "nc") or not hasattr(head, "stride"):
        raise BundleError(
            f"expected an ultralytics DetectionModel (layers ending in a Detect head), got "
            f"{type(network).__name__}"
        )
    return head


def to_onnx(
    module: RawHead, input_size: tuple[int, int], *, opset: int = MIN_OPSET
) -> tuple[onnx.ModelProto, str]:
    """The raw head as ONNX with a dynamic batch axis, and the exporter that made it."""
    example = torch.zeros((2, 3, *input_size), dtype=torch.float32)
    errors = []
    for exporter in EXPORTERS:
        try:
            with quiet_exporter(), torch.no_grad():
                proto = _export(module, example, exporter, opset)
        except Exception as exc:
            errors.append(f"{exporter}: {type(exc).__name__}: {exc}")
            continue
        _check_io(proto)
        _fix_output_shape(proto, module, example)
        return proto, exporter
    raise BundleError(
        "torch.onnx.export failed for the detection network:\n  " + "\n  ".join(errors),
        hint="Run with --debug for the traceback.",
    )


def _export(module: RawHead, example: torch.Tensor, exporter: str, opset: int) -> onnx.ModelProto:
    if exporter == "torchscript":
        buffer = io.BytesIO()
        torch.onnx.export(
            module,
            (example,),
            buffer,  # pyright: ignore[reportArgumentType]
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
        return onnx.load_from_string(buffer.getvalue())
    head = _detect_head(module.network)
    head.dynamic = True  # anchors from the input's shape: torch.export then keeps batch free
    program = torch.onnx.export(
        module,
        (example,),
        input_names=[INPUT],
        output_names=[OUTPUT],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
        opset_version=opset,
        dynamo=True,
        verbose=False,
    )
    assert program is not None  # dynamo=True always returns the program
    return program.model_proto


def _check_io(proto: onnx.ModelProto) -> None:
    inputs = [value.name for value in proto.graph.input]
    outputs = [value.name for value in proto.graph.output]
    if inputs != [INPUT] or outputs != [OUTPUT]:
        raise BundleError(
            f"the exported detection network has inputs {inputs} and outputs {outputs}; "
            f"expected [{INPUT!r}] and [{OUTPUT!r}]"
        )
    check_free_batch_axis(proto)


def _fix_output_shape(proto: onnx.ModelProto, module: RawHead, example: torch.Tensor) -> None:
    """Write the head's channel and anchor counts into the output's type: the TorchScript
    exporter leaves them symbolic, and a server reads the class count from there."""
    with torch.no_grad():
        shape = module(example).shape
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    for axis in (1, 2):
        dims[axis].Clear()
        dims[axis].dim_value = int(shape[axis])
    onnx.checker.check_model(proto)


def to_torchscript(module: RawHead, input_size: tuple[int, int]) -> bytes:
    """The raw head traced to TorchScript (``torch.jit.load`` reads it; any batch size)."""
    example = torch.zeros((1, 3, *input_size), dtype=torch.float32)
    with quiet_exporter(), torch.no_grad():
        traced = torch.jit.trace(module, example, check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    return buffer.getvalue()


def run_torchscript(data: bytes, images: Any) -> Any:
    """The saved TorchScript module's raw head for ``images`` (numpy ``[B, 3, H, W]``)."""
    module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    with torch.no_grad():
        return module(torch.from_numpy(images)).numpy()
