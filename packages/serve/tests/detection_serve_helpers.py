"""A synthetic detection bundle (no torch) and a plain reference NMS, for the detection tests.

The model, built with ``onnx.helper``, has the shape of a YOLO head and a behaviour a test can
predict: the ``images`` input ``[-1, 3, 64, 64]`` is cut into an 8 x 8 grid of 8-pixel cells;
anchor ``row * 8 + col`` is a 16 x 16 box centred on its cell, and its three class scores
(``red``, ``green``, ``blue``) are the cell's mean R, G and B less the least of the three (grey,
the letterbox padding included, scores 0 everywhere). A coloured square on a black image is therefore detected where it is, with its colour as class. Two boxes of next cells
overlap with IoU 1/3: kept at ``iou`` 0.7, the weaker suppressed at 0.3 when they share a class.

Imported by name (``from detection_serve_helpers import ...``), here and from the workspace tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mlp_core.files import sha256_file

OPSET = 17
SIZE = 64
CELL = 8
GRID = SIZE // CELL
ANCHORS = GRID * GRID
BOX = 16.0
LABELS = ["red", "green", "blue"]
RAW = "output0"
OUTPUTS = [
    ("num_detections", "INT32", [-1]),
    ("detection_boxes", "FP32", [-1, -1, 4]),
    ("detection_scores", "FP32", [-1, -1]),
    ("detection_classes", "INT32", [-1, -1]),
    ("detection_labels", "BYTES", [-1, -1]),
]


def letterbox_spec(size: int) -> dict:
    """The preprocessing of a YOLO detector at ``size`` x ``size``, every field spelt out (as the
    exporter writes it): letterboxed with grey 114, scaled to [0, 1], no normalisation."""
    return {
        "kind": "image",
        "version": 1,
        "color_mode": "RGB",
        "resize_mode": "letterbox",
        "resize_size": [size, size],
        "interpolation": "bilinear",
        "crop_size": [size, size],
        "pad_value": 114,
        "scale": 1 / 255,
        "mean": [0.0, 0.0, 0.0],
        "std": [1.0, 1.0, 1.0],
        "channel_order": ["R", "G", "B"],
        "layout": "CHW",
        "dtype": "float32",
        "input_dtype": "uint8",
    }


LETTERBOX_SPEC = letterbox_spec(SIZE)


def anchor_xywh() -> np.ndarray:
    """``[4, ANCHORS]``: each anchor's box centre, width and height in input pixels."""
    rows, cols = np.divmod(np.arange(ANCHORS), GRID)
    centre_x = cols * CELL + CELL / 2
    centre_y = rows * CELL + CELL / 2
    sizes = np.full(ANCHORS, BOX)
    return np.stack([centre_x, centre_y, sizes, sizes]).astype(np.float32)


def detection_model() -> onnx.ModelProto:
    """images FP32 [-1, 3, 64, 64] -> output0 FP32 [-1, 7, 64] (see the module docstring)."""
    xywh = numpy_helper.from_array(anchor_xywh()[None], "xywh")
    shape = numpy_helper.from_array(np.array([0, 3, ANCHORS], dtype=np.int64), "shape")
    zero = numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")
    nodes = [
        helper.make_node(
            "AveragePool", ["images"], ["pooled"], kernel_shape=[CELL, CELL], strides=[CELL, CELL]
        ),
        helper.make_node("Reshape", ["pooled", "shape"], ["means"]),
        helper.make_node("ReduceMin", ["means"], ["least"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["means", "least"], ["scores"]),
        # xywh broadcast over the batch: [N, 1, A] zeros + [1, 4, A].
        helper.make_node("Mul", ["least", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "xywh"], ["boxes"]),
        helper.make_node("Concat", ["boxes", "scores"], [RAW], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "synthetic_yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info(RAW, TensorProto.FLOAT, ["batch", 4 + 3, ANCHORS])],
        initializer=[xywh, shape, zero],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def raw_head(images: np.ndarray) -> np.ndarray:
    """What the model computes, in numpy: ``[N, 7, 64]`` for ``images`` ``[N, 3, 64, 64]``."""
    count = images.shape[0]
    cells = images.reshape(count, 3, GRID, CELL, GRID, CELL).mean(axis=(3, 5))
    means = cells.reshape(count, 3, ANCHORS)
    scores = means - means.min(axis=1, keepdims=True)
    boxes = np.broadcast_to(anchor_xywh()[None], (count, 4, ANCHORS))
    return np.concatenate([boxes, scores], axis=1).astype(np.float32)


def write_detection_bundle(
    repo: Path, name: str = "shapes", version: int = 1, **fields: object
) -> Path:
    """``repo/name/version``: the synthetic model and a manifest as `mlp export` writes one."""
    folder = repo / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(detection_model().SerializeToString())
    document = {
        "name": name,
        "version": version,
        "task": "detection",
        "kind": "detection",
        "inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, 3, SIZE, SIZE]}],
        "outputs": [{"name": n, "datatype": d, "shape": s} for n, d, s in OUTPUTS],
        "class_labels": LABELS,
        "detection": {"confidence": 0.25, "iou": 0.7, "max_detections": 300},
        "preprocessing": LETTERBOX_SPEC,
        "sha256": sha256_file(folder / "model.onnx"),
        "opset": OPSET,
        **fields,
    }
    (folder / "manifest.json").write_text(json.dumps(document), encoding="utf-8")
    return folder


def painted(cells: dict[tuple[int, int], tuple[int, int, int]], size: int = SIZE) -> np.ndarray:
    """An RGB uint8 ``[size, size, 3]`` black image with the given grid cells (row, col) filled
    with a colour (cells of ``size / 8`` pixels)."""
    image = np.zeros((size, size, 3), dtype=np.uint8)
    step = size // GRID
    for (row, col), colour in cells.items():
        image[row * step : (row + 1) * step, col * step : (col + 1) * step] = colour
    return image


def as_input(pixels: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` uint8 pixels -> the model input ``[1, 3, H, W]`` in [0, 1]."""
    return (pixels.astype(np.float32) / np.float32(255))[None].transpose(0, 3, 1, 2).copy()


def reference_nms(
    raw: np.ndarray, confidence: float, iou: float, max_detections: int
) -> list[np.ndarray]:
    """Per image ``[n, 6]`` (x1, y1, x2, y2, score, class): the textbook definition, written
    independently of the server's: best class per anchor, score above ``confidence``, then per
    class, best first, drop every box whose IoU with a kept box of its class exceeds ``iou``;
    all classes' kept boxes by score, the first ``max_detections``."""
    results = []
    for head in np.asarray(raw, dtype=np.float64):
        found = []
        for anchor in range(head.shape[1]):
            scores = head[4:, anchor]
            label = int(np.argmax(scores))
            if scores[label] > confidence:
                x, y, w, h = head[:4, anchor]
                found.append(
                    (float(scores[label]), label, (x - w / 2, y - h / 2, x + w / 2, y + h / 2))
                )
        kept = []
        for label in sorted({f[1] for f in found}):
            mine = sorted((f for f in found if f[1] == label), key=lambda f: -f[0])
            chosen: list[tuple] = []
            for candidate in mine:
                if all(_iou(candidate[2], other[2]) <= iou for other in chosen):
                    chosen.append(candidate)
            kept += chosen
        kept.sort(key=lambda f: -f[0])
        rows = [(*box, score, label) for score, label, box in kept[:max_detections]]
        results.append(np.asarray(rows, dtype=np.float32).reshape(-1, 6))
    return results


def _iou(a: tuple, b: tuple) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
