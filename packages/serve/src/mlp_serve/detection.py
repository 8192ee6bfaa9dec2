"""Object detection post-processing in numpy: a YOLO network's raw head to boxes.

A detection bundle's ONNX graph ends at the raw head, ``[B, 4 + nc, A]``: for each of ``A``
anchors the box centre, width and height in model-input pixels, then one score per class. The
server turns that into boxes here, with no torch, so that each request may choose its own
``confidence``, ``iou`` and ``max_detections`` and a batch has no size cap (ultralytics' in-graph
NMS export unrolls its per-image loop to the export batch).

:func:`non_max_suppression` follows ultralytics' ``DetectionPredictor`` (``non_max_suppression``
with ``agnostic=False``, ``multi_label=False``, ``max_nms=30000``, ``max_wh=7680``) step by step,
in float32 as it computes: candidates whose best class score is above the confidence (strictly),
the best class only, the top 30000 by score, then greedy NMS per class (boxes offset by
``class * 7680`` so boxes of different classes never overlap) keeping IoU <= ``iou``, at most
``max_detections``. The confidence filter runs on the whole batch at once; the greedy NMS runs
per image, vectorised over the remaining boxes, and stops once ``max_detections`` are kept.

:func:`detection_outputs` pads the per-image results into the outputs Triton users know
(``num_detections``, ``detection_boxes``, ``detection_scores``, ``detection_classes``,
``detection_labels``), ``K`` being the most detections of any image in the batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from mlp_serve.errors import InvalidInput

__all__ = [
    "DETECTION_OUTPUTS",
    "MAX_NMS",
    "MAX_WH",
    "RAW_OUTPUT",
    "DetectionParams",
    "detection_outputs",
    "non_max_suppression",
]

# ultralytics' constants: the per-class offset (pixels) and the most boxes that enter the NMS.
MAX_WH = 7680
MAX_NMS = 30000
# The raw head's name in ultralytics' ONNX export (and in our bundles).
RAW_OUTPUT = "output0"

NUM_DETECTIONS = "num_detections"
DETECTION_BOXES = "detection_boxes"
DETECTION_SCORES = "detection_scores"
DETECTION_CLASSES = "detection_classes"
DETECTION_LABELS = "detection_labels"
# name -> (datatype, shape with -1 for the batch and the padded detection axis)
DETECTION_OUTPUTS: dict[str, tuple[str, tuple[int, ...]]] = {
    NUM_DETECTIONS: ("INT32", (-1,)),
    DETECTION_BOXES: ("FP32", (-1, -1, 4)),
    DETECTION_SCORES: ("FP32", (-1, -1)),
    DETECTION_CLASSES: ("INT32", (-1, -1)),
    DETECTION_LABELS: ("BYTES", (-1, -1)),
}

Float32Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class DetectionParams:
    """The post-processing thresholds of one request: the bundle's defaults, or its overrides.

    ``confidence``: keep boxes whose best class score is above it (0, 1]; ``iou``: a box whose IoU
    with a better box of its class is above it is suppressed (0, 1]; ``max_detections`` >= 1 per
    image.
    """

    confidence: float = 0.25
    iou: float = 0.7
    max_detections: int = 300

    def __post_init__(self) -> None:
        _check_fraction("confidence", self.confidence)
        _check_fraction("iou", self.iou)
        _check_count("max_detections", self.max_detections)

    def override(self, parameters: Mapping[str, Any] | None) -> DetectionParams:
        """These defaults with a request's ``confidence``, ``iou`` and ``max_detections``
        parameters (numbers, or text that reads as one: query strings). Other parameters are not
        this module's business and are ignored; a bad value is an :class:`InvalidInput` naming
        the parameter and what it must be."""
        parameters = parameters or {}
        confidence, iou, max_detections = self.confidence, self.iou, self.max_detections
        if parameters.get("confidence") is not None:
            confidence = _check_fraction("confidence", _number("confidence", parameters))
        if parameters.get("iou") is not None:
            iou = _check_fraction("iou", _number("iou", parameters))
        if parameters.get("max_detections") is not None:
            max_detections = _check_count("max_detections", _number("max_detections", parameters))
        return DetectionParams(confidence, iou, int(max_detections))


def non_max_suppression(
    raw: npt.ArrayLike,
    confidence: float = 0.25,
    iou: float = 0.7,
    max_detections: int = 300,
) -> list[Float32Array]:
    """Per image, the kept detections as ``[n, 6]`` float32 rows ``x1, y1, x2, y2, score,
    class`` in model-input pixels (not clipped), best score first: what ultralytics'
    ``non_max_suppression`` returns for ``raw`` ``[B, 4 + nc, A]`` with these thresholds.
    """
    params = DetectionParams(confidence, iou, max_detections)  # checks the thresholds
    head = np.asarray(raw, dtype=np.float32)
    if head.ndim != 3 or head.shape[1] < 5:
        raise InvalidInput(
            f"the detection head has shape {list(head.shape)}; expected [batch, 4 + classes, "
            "anchors] with at least one class"
        )
    scores = head[:, 4:, :]
    best = scores.max(axis=1)  # [B, A]
    candidates = best > params.confidence
    results = []
    for image in range(head.shape[0]):
        anchors = np.flatnonzero(candidates[image])
        results.append(_image_detections(head[image], anchors, params))
    return results


def detection_outputs(
    detections: Sequence[np.ndarray],
    class_labels: Sequence[str] | None = None,
    clip_to: tuple[int, int] | None = None,
) -> dict[str, np.ndarray]:
    """The Triton-convention outputs for a batch's detections (as :func:`non_max_suppression`
    returns them), padded to the most detections of any image (zeros, empty labels).

    ``clip_to`` (height, width) clips the boxes to the image, as ultralytics does when it scales
    boxes back; a label is the class's name, or its number where the bundle has no names.
    """
    batch = len(detections)
    width = max((len(d) for d in detections), default=0)
    num = np.zeros(batch, dtype=np.int32)
    boxes = np.zeros((batch, width, 4), dtype=np.float32)
    scores = np.zeros((batch, width), dtype=np.float32)
    classes = np.zeros((batch, width), dtype=np.int32)
    labels = np.full((batch, width), b"", dtype=object)
    names = [str(label).encode("utf-8") for label in class_labels or []]
    for image, rows in enumerate(detections):
        count = len(rows)
        num[image] = count
        if not count:
            continue
        kept = np.asarray(rows, dtype=np.float32)
        boxes[image, :count] = kept[:, :4]
        scores[image, :count] = kept[:, 4]
        ids = kept[:, 5].astype(np.int32)
        classes[image, :count] = ids
        labels[image, :count] = [
            names[i] if 0 <= i < len(names) else str(i).encode("ascii") for i in ids
        ]
    if clip_to is not None:
        height, width_px = clip_to
        boxes[..., [0, 2]] = boxes[..., [0, 2]].clip(0, width_px)
        boxes[..., [1, 3]] = boxes[..., [1, 3]].clip(0, height)
    return {
        NUM_DETECTIONS: num,
        DETECTION_BOXES: boxes,
        DETECTION_SCORES: scores,
        DETECTION_CLASSES: classes,
        DETECTION_LABELS: labels,
    }


# -- internals ---------------------------------------------------------------------------------


def _image_detections(
    head: Float32Array, anchors: npt.NDArray[np.intp], params: DetectionParams
) -> Float32Array:
    """One image's NMS over its candidate anchors (``head`` is ``[4 + nc, A]``)."""
    if not anchors.size:
        return np.zeros((0, 6), dtype=np.float32)
    rows = head[:, anchors].T  # [n, 4 + nc]
    boxes = _xywh_to_xyxy(rows[:, :4])
    class_scores = rows[:, 4:]
    classes = class_scores.argmax(axis=1)
    scores = class_scores[np.arange(len(rows)), classes]
    keep = scores > params.confidence
    boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
    if not len(scores):
        return np.zeros((0, 6), dtype=np.float32)
    if len(scores) > MAX_NMS:
        top = np.argsort(-scores, kind="stable")[:MAX_NMS]
        boxes, scores, classes = boxes[top], scores[top], classes[top]
    # Boxes of different classes far apart: one NMS pass is a per-class NMS.
    offset = classes.astype(np.float32)[:, None] * np.float32(MAX_WH)
    kept = _greedy_nms(boxes + offset, scores, params.iou, params.max_detections)
    out = np.empty((len(kept), 6), dtype=np.float32)
    out[:, :4] = boxes[kept]
    out[:, 4] = scores[kept]
    out[:, 5] = classes[kept]
    return out


def _xywh_to_xyxy(xywh: Float32Array) -> Float32Array:
    # As ultralytics' xywh2xyxy: half sizes first, in float32.
    out = np.empty_like(xywh)
    half = xywh[:, 2:] / np.float32(2)
    out[:, :2] = xywh[:, :2] - half
    out[:, 2:] = xywh[:, :2] + half
    return out


def _greedy_nms(
    boxes: Float32Array, scores: Float32Array, iou: float, limit: int
) -> npt.NDArray[np.intp]:
    """Indices of the boxes kept by greedy NMS, best score first (torchvision's ``nms``:
    suppress the boxes whose IoU with a kept one is above ``iou``), at most ``limit``."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    threshold = np.float32(iou)
    while order.size and len(keep) < limit:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        if not rest.size:
            break
        width = np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest])
        height = np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest])
        inter = np.maximum(width, 0) * np.maximum(height, 0)
        overlap = inter / (areas[best] + areas[rest] - inter)
        # NaN (two empty boxes) compares False: kept, as torchvision keeps it.
        order = rest[~(overlap > threshold)]
    return np.asarray(keep, dtype=np.intp)


def _number(name: str, parameters: Mapping[str, Any]) -> float:
    value = parameters[name]
    if isinstance(value, bool):
        raise InvalidInput(f"parameter {name!r}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (str, bytes)):
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        try:
            return float(text)
        except ValueError:
            pass
    raise InvalidInput(f"parameter {name!r}: expected a number, got {value!r}")


def _check_fraction(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)) or not (
        0.0 < float(value) <= 1.0
    ):
        raise InvalidInput(f"parameter {name!r} must be in (0, 1], got {value!r}")
    return float(value)


def _check_count(name: str, value: float) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value != int(value)
        or value < 1
    ):
        raise InvalidInput(f"parameter {name!r} must be a whole number >= 1, got {value!r}")
    return int(value)
