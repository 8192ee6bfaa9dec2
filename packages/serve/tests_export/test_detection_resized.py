"""The detection export's parity gate on test images that are not the model's size.

The letterbox resizes every one of them (shrinks, grows, halves, odd ratios), so the gate
compares ultralytics' predict (OpenCV's resize, its scale_boxes) against the served path
(mlp_core's letterbox, onnxruntime, the server's NMS, Letterbox.to_original) where they could
differ; the thresholds are the real ones (IoU >= 0.99, the same class, scores within 1e-3).
Measured before the resize was OpenCV's to the bit: one grey level on a few dozen pixels moved
this network's scores by up to 0.1, and boxes clipped flat into the padding never paired (the
pairing rule for those is in test_detection_parity.py).
"""

from __future__ import annotations

import pytest
from detection_export_helpers import write_detection_run, write_shapes_data

from mlp_serve.export import export_run
from mlp_serve.export.detection_parity import DETECTION_TOLERANCES

# [h, w]: shrunk, halved, shrunk by an odd ratio, wide, tall, grown, and a 64 x 64 one.
TEST_SIZES = [(48, 80), (128, 96), (200, 150), (40, 90), (100, 64), (36, 30), (64, 64)]


@pytest.fixture(scope="module")
def check(tmp_path_factory) -> dict:
    """The gate's record of an fp32 export of a run whose test images are resized."""
    root = tmp_path_factory.mktemp("resized")
    data = write_shapes_data(root / "shapes", test_sizes=TEST_SIZES)
    run = write_detection_run(root / "run", data=data)
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
