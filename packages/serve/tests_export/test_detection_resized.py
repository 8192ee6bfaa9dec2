"""The detection export's parity gate on test images that are not the model's size.

The letterbox resizes every one of them (shrinks, grows, halves, odd ratios), so the gate
compares ultralytics' predict (OpenCV's resize, its scale_boxes) against the served path
(mlp_core's letterbox, onnxruntime, the server's NMS, Letterbox.to_original) where they could
differ; the thresholds are the real ones (IoU >= 0.99, the same class, scores within 1e-3).
Measured before the resize was OpenCV's to the bit: one grey level on a few dozen pixels moved
this network's scores by up to 0.1, and boxes clipped flat into the padding never paired.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from detection_export_helpers import CLASSES, IMGSZ, write_detection_run
from PIL import Image, ImageDraw

from mlp_serve.detection import DetectionParams
from mlp_serve.export import export_run
from mlp_serve.export.detection_parity import DETECTION_TOLERANCES, compare_detections

# [h, w]: shrunk, halved, shrunk by an odd ratio, wide, tall, grown, and a 64 x 64 one.
TEST_SIZES = [(48, 80), (128, 96), (200, 150), (40, 90), (100, 64), (36, 30), (64, 64)]


def write_resized_data(folder: Path) -> Path:
    """A YOLO dataset whose test images have the sizes of TEST_SIZES, labelled. (Seed 0: the
    48 x 80 image gets boxes clipped flat into the padding, 6 at the default thresholds.)"""
    rng = np.random.default_rng(0)
    splits = {"train": [(IMGSZ, IMGSZ)], "val": [(IMGSZ, IMGSZ)], "test": TEST_SIZES}
    for split, sizes in splits.items():
        (folder / "images" / split).mkdir(parents=True)
        (folder / "labels" / split).mkdir(parents=True)
        for index, (height, width) in enumerate(sizes):
            image = Image.new("RGB", (width, height), (30, 30, 30))
            draw = ImageDraw.Draw(image)
            labels = []
            for _ in range(int(rng.integers(1, 4))):
                w, h = int(rng.integers(6, width // 2)), int(rng.integers(6, height // 2))
                x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
                cls = int(rng.integers(0, len(CLASSES)))
                colour = tuple(int(c) for c in rng.integers(60, 256, 3))
                shape = (draw.rectangle, draw.ellipse, draw.rectangle)[cls]
                shape((x, y, x + w, y + h), fill=colour)
                labels.append(
                    f"{cls} {(x + w / 2) / width:.6f} {(y + h / 2) / height:.6f} "
                    f"{w / width:.6f} {h / height:.6f}"
                )
            image.save(folder / "images" / split / f"{split}_{index}.png")
            (folder / "labels" / split / f"{split}_{index}.txt").write_text("\n".join(labels))
    (folder / "data.yaml").write_text(
        "path: .\ntrain: images/train\nval: images/val\ntest: images/test\n"
        f"names: {json.dumps(CLASSES)}\n"
    )
    return folder


@pytest.fixture(scope="module")
def check(tmp_path_factory) -> dict:
    """The gate's record of an fp32 export of a run whose test images are resized."""
    root = tmp_path_factory.mktemp("resized")
    run = write_detection_run(root / "run", data=write_resized_data(root / "shapes"))
    result = export_run(run, root / "repo", log_to_mlflow=False)
    assert result.manifest.parity is not None and result.manifest.parity.passed
    return result.manifest.training["export_check"]


def test_the_gate_passes_on_resized_images_with_every_box_paired(check):
    assert check["source"].startswith(f"{len(TEST_SIZES)} test images of")
    assert check["passed"] is True and check["failures"] == []
    tolerance = DETECTION_TOLERANCES["fp32"]
    for record in (check, check["low_confidence"]):
        # Real boxes on both sides, each paired at the real tolerance, nothing excused.
        assert record["reference_detections"] >= 10 * len(TEST_SIZES)
        assert record["paired"] == record["reference_detections"] == record["served_detections"]
        assert record["class_mismatches"] == record["unexplained"] == 0
        assert record["excused"] == {"confidence": 0, "max_detections": 0, "nms": 0}
        assert record["min_iou"] >= tolerance.iou
        assert record["max_score_diff"] <= tolerance.score


def rows(*detections: tuple[float, ...]) -> np.ndarray:
    return np.asarray(detections, dtype=np.float32).reshape(-1, 6)


def test_boxes_clipped_flat_pair_as_their_extents():
    """A box wholly in the padding below a 48 x 80 image is clipped to y1 == y2 == 48 on both
    sides (ultralytics keeps it): no area, but the same box."""
    params = DetectionParams(confidence=0.25, iou=0.7, max_detections=300)
    tolerance = DETECTION_TOLERANCES["fp32"]
    flat = rows((0, 48, 80, 48, 0.9, 0), (0, 48, 68.4, 48, 0.7, 2), (10, 10, 30, 30, 0.6, 1))
    same = compare_detections([flat], [flat[::-1].copy()], params, tolerance)
    assert same["passed"] and same["paired"] == 3 and same["min_iou"] == 1.0
    shorter = flat.copy()
    shorter[1, 2] = 60.0  # the flat box's extent: 60 / 68.4 = IoU 0.88
    record = compare_detections([flat], [shorter], params, tolerance)
    assert not record["passed"] and "IoU 0.877" in record["failures"][0]
    elsewhere = flat.copy()
    elsewhere[0, [1, 3]] = 0.0  # flat at the top instead: not the same box
    record = compare_detections([flat], [elsewhere], params, tolerance)
    assert not record["passed"] and record["unexplained"] == 2
