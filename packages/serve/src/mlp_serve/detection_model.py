"""A detection bundle as the server answers for it: outputs, checks, post-processing, and what
ultralytics' own Triton client reads.

The ONNX graph of a detection bundle ends at the raw head (its single output, ``output0`` in
ultralytics' export): the batcher runs only that, so concurrent requests share one onnxruntime
run whatever their thresholds, and each request's detections are computed afterwards with its own
``confidence``, ``iou`` and ``max_detections`` (:mod:`mlp_serve.detection`).

What a client sees:

- the model metadata lists the Triton-convention outputs (``num_detections``,
  ``detection_boxes``, ``detection_scores``, ``detection_classes``, ``detection_labels``), which
  a request gets when it names no outputs, and then the raw head, which a request gets only by
  naming it;
- the model config is Triton's configuration of the ONNX model itself: its input and its one raw
  output, plus ``parameters.metadata``, the Python repr of the metadata dict ultralytics' exports
  carry (names, stride, imgsz, task, batch, args). ultralytics' ``TritonRemoteModel`` asks for
  every output the config lists and casts each to float32, then runs its own NMS on the first:
  it needs exactly the raw head there (a BYTES output would not even cast). So
  ``YOLO("http://HOST:PORT/MODEL", task="detect")`` gets what the ``.pt`` computes and finds the
  same boxes, while tritonclient users get the post-processed outputs by default.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlp_core.image_spec import ImageEvalSpec
from mlp_core.tensors import TensorSpec
from mlp_serve.bundle import Manifest
from mlp_serve.detection import (
    DETECTION_OUTPUTS,
    DetectionParams,
    detection_outputs,
    non_max_suppression,
)
from mlp_serve.errors import BundleError, InvalidInput
from mlp_serve.images import eval_spec
from mlp_serve.runtime import ModelRuntime
from mlp_serve.types import InferRequest

KIND = "detection"
# ultralytics' YOLO strides: the largest is the multiple an input size must be.
DEFAULT_STRIDE = 32


def is_detection(manifest: Manifest | None) -> bool:
    return manifest is not None and manifest.kind == KIND


@dataclass(frozen=True)
class DetectionModel:
    """What the server needs to answer for one detection bundle (built once, when it loads)."""

    image_input: TensorSpec
    raw: TensorSpec
    class_labels: tuple[str, ...]
    defaults: DetectionParams
    spec: ImageEvalSpec
    stride: int = DEFAULT_STRIDE
    outputs: tuple[TensorSpec, ...] = field(init=False)

    def __post_init__(self) -> None:
        served = [
            TensorSpec(name=n, datatype=d, shape=s) for n, (d, s) in DETECTION_OUTPUTS.items()
        ]
        object.__setattr__(self, "outputs", (*served, self.raw))

    @classmethod
    def for_bundle(cls, folder: Path, manifest: Manifest, runtime: ModelRuntime) -> DetectionModel:
        """Check that the bundle is a servable detection model; a :class:`BundleError` names
        what is wrong (the version is then refused, and the others keep serving)."""
        if len(runtime.inputs) != 1 or len(runtime.outputs) != 1:
            raise BundleError(
                f"{folder}: a detection model takes one image input and returns one raw head; "
                f"this one has inputs {[t.name for t in runtime.inputs]} and outputs "
                f"{[t.name for t in runtime.outputs]}",
                hint="Export it again with `mlp export` (no NMS in the graph).",
            )
        image, raw = runtime.inputs[0], runtime.outputs[0]
        if len(image.shape) != 4 or raw.datatype not in ("FP32", "FP16") or len(raw.shape) != 3:
            raise BundleError(
                f"{folder}: expected an image input [batch, 3, H, W] and a raw head "
                f"[batch, 4 + classes, anchors]; got {image.name} {list(image.shape)} and "
                f"{raw.name} {raw.datatype} {list(raw.shape)}",
                hint="Export it again with `mlp export` (no NMS in the graph).",
            )
        labels = tuple(manifest.class_labels or ())
        if raw.shape[1] > 0 and labels and raw.shape[1] != 4 + len(labels):
            raise BundleError(
                f"{folder}: the raw head {raw.name} has {raw.shape[1]} channels, but the "
                f"manifest names {len(labels)} classes (4 + {len(labels)} expected)"
            )
        declared = {t.name for t in manifest.outputs}
        unknown = declared - set(DETECTION_OUTPUTS) - {raw.name}
        if unknown:
            raise BundleError(
                f"{folder}: the manifest lists outputs {sorted(unknown)} that a detection model "
                f"does not have; it answers {[*DETECTION_OUTPUTS, raw.name]}"
            )
        spec = eval_spec(manifest.preprocessing)
        if spec.resize_mode != "letterbox":
            raise BundleError(
                f"{folder}: a detection bundle's preprocessing must be a letterbox spec, not "
                f"{spec.resize_mode!r}"
            )
        defaults = manifest.detection
        params = (
            DetectionParams(defaults.confidence, defaults.iou, defaults.max_detections)
            if defaults is not None
            else DetectionParams()
        )
        return cls(image, raw, labels, params, spec, _stride(runtime))

    # -- requests ------------------------------------------------------------------------

    @property
    def default_outputs(self) -> list[str]:
        return list(DETECTION_OUTPUTS)

    def plan(self, request: InferRequest) -> tuple[list[str], DetectionParams]:
        """The outputs to answer (the post-processed ones unless named) and the thresholds;
        an :class:`InvalidInput` names an unknown output or a bad parameter."""
        names = [o.name for o in request.outputs]
        known = [t.name for t in self.outputs]
        for name in names:
            if name not in known:
                raise InvalidInput(f"unknown output {name!r}; the model returns {', '.join(known)}")
        if len(set(names)) != len(names):
            raise InvalidInput(f"an output is requested twice: {names}")
        return names or self.default_outputs, self.defaults.override(request.parameters)

    def answer(
        self, request: InferRequest, names: Sequence[str], results: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """The requested outputs from the raw head of this request's images."""
        _, params = self.plan(request)
        raw = results[self.raw.name]
        answers: dict[str, np.ndarray] = {}
        if any(name != self.raw.name for name in names):
            detections = non_max_suppression(
                raw, params.confidence, params.iou, params.max_detections
            )
            height, width = (int(d) for d in _image_shape(request, self.image_input.name))
            answers = detection_outputs(detections, self.class_labels, clip_to=(height, width))
        answers[self.raw.name] = raw
        return {name: answers[name] for name in names}

    # -- metadata ------------------------------------------------------------------------

    def parameters(self) -> dict[str, Any]:
        """Model parameters for the metadata and the config (strings, as the protocol's are)."""
        return {
            "preprocessing": json.dumps(self.spec.to_dict()),
            "detection": json.dumps(
                {
                    "confidence": self.defaults.confidence,
                    "iou": self.defaults.iou,
                    "max_detections": self.defaults.max_detections,
                    "raw_output": self.raw.name,
                }
            ),
            "metadata": repr(self.ultralytics_metadata()),
        }

    def ultralytics_metadata(self) -> dict[str, Any]:
        """The metadata dict of an ultralytics export, as its ``TritonRemoteModel`` reads it
        with ``ast.literal_eval``: plain literals only.

        ``dynamic: False`` makes ultralytics predict at the bundle's ``imgsz`` (the size it was
        trained and exported at) and send one image per request, as it does for a fixed-size
        export; the server itself takes any batch.
        """
        height, width = self.spec.crop_size
        half = self.image_input.datatype == "FP16"
        return {
            "description": "mlp detection model served by mlp-serve",
            "author": "mlp",
            "task": "detect",
            "stride": self.stride,
            "batch": 1,
            "imgsz": [height, width],
            "names": {index: label for index, label in enumerate(self.class_labels)},
            "channels": self.spec.channels,
            "end2end": False,
            "args": {"batch": 1, "dynamic": False, "half": half, "nms": False},
        }


def _image_shape(request: InferRequest, name: str) -> tuple[int, int]:
    for tensor in request.inputs:
        if tensor.name == name:
            return int(tensor.shape[-2]), int(tensor.shape[-1])
    raise InvalidInput(f"missing input {name!r}")  # validation refused it before: kept for types


def _stride(runtime: ModelRuntime) -> int:
    # ultralytics' ONNX export records its stride in the graph's metadata; ours may not.
    try:
        custom = runtime.session.get_modelmeta().custom_metadata_map
        return int(custom.get("stride", DEFAULT_STRIDE))
    except (AttributeError, ValueError, TypeError):
        return DEFAULT_STRIDE
