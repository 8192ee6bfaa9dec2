"""The detection gate's comparison on detections written by hand: what passes, what fails."""

from __future__ import annotations

import numpy as np

from mlp_serve.detection import DetectionParams
from mlp_serve.export.detection_parity import DETECTION_TOLERANCES, compare_detections

PARAMS = DetectionParams(confidence=0.25, iou=0.7, max_detections=300)
FP32 = DETECTION_TOLERANCES["fp32"]


def rows(*detections: tuple[float, float, float, float, float, int]) -> np.ndarray:
    return np.asarray(detections, dtype=np.float32).reshape(-1, 6)


REFERENCE = rows((10, 10, 30, 30, 0.9, 0), (40, 5, 60, 25, 0.6, 1), (5, 40, 25, 60, 0.4, 2))


def compare(reference: np.ndarray, served: np.ndarray, params=PARAMS, tolerance=FP32) -> dict:
    return compare_detections([reference], [served], params, tolerance)


def test_the_same_detections_in_another_order_pass():
    served = REFERENCE[::-1].copy()
    served[:, 4] += 5e-4  # within the score tolerance
    record = compare(REFERENCE, served)
    assert record["passed"] and record["paired"] == 3 and record["failures"] == []
    assert record["max_score_diff"] <= 1e-3 and record["min_iou"] == 1.0


def test_a_shifted_box_a_score_off_and_a_class_changed_each_fail():
    shifted = REFERENCE.copy()
    shifted[0, [0, 2]] += 1.0  # IoU 0.905
    assert not compare(REFERENCE, shifted)["passed"]
    rescored = REFERENCE.copy()
    rescored[1, 4] += 0.01
    record = compare(REFERENCE, rescored)
    assert not record["passed"] and "score difference" in record["failures"][0]
    reclassed = REFERENCE.copy()
    reclassed[2, 5] = 0
    record = compare(REFERENCE, reclassed)
    assert not record["passed"] and record["class_mismatches"] == 1


def test_a_missing_or_extra_confident_box_fails():
    assert not compare(REFERENCE, REFERENCE[:2])["passed"]
    extra = np.concatenate([REFERENCE, rows((40, 40, 60, 60, 0.8, 0))])
    record = compare(REFERENCE, extra)
    assert not record["passed"] and record["unexplained"] == 1


def test_boxes_at_the_confidence_threshold_may_differ():
    borderline = np.concatenate([REFERENCE, rows((40, 40, 60, 60, 0.2505, 0))])
    record = compare(borderline, REFERENCE)
    assert record["passed"] and record["excused"]["confidence"] == 1


def test_at_the_noise_floor_a_paired_box_and_its_class_may_differ_but_not_above_it():
    # Both scores within the score tolerance of the confidence threshold: the box and the class
    # of such a detection are noise too, so the pair is counted, not failed.
    def faint(score: float, shift: float, cls: int) -> tuple[np.ndarray, np.ndarray]:
        reference = np.concatenate([REFERENCE, rows((40, 40, 60, 60, score, 0))])
        served = np.concatenate([REFERENCE, rows((40 + shift, 40, 60 + shift, 60, score, cls))])
        return reference, served

    for shift, cls in ((3.0, 0), (0.0, 1)):  # IoU 0.74, or the class crossed
        record = compare(*faint(0.2508, shift, cls))
        assert record["passed"] and record["excused"]["confidence"] == 1, record
        record = compare(*faint(0.3, shift, cls))  # the same difference, above the floor
        assert not record["passed"] and record["excused"]["confidence"] == 0, record


def test_an_nms_decision_at_the_iou_threshold_may_differ_but_a_broken_nms_fails():
    # A second box of class 0 overlapping the first at IoU 0.7 (the threshold): one side
    # suppressed it, the other kept it.
    near = rows((10, 10, 30, 30, 0.9, 0), (10, 10, 30, 24, 0.5, 0))  # IoU 14/20 = 0.7
    record = compare(near[:1], near)
    assert record["passed"] and record["excused"]["nms"] == 1
    # A duplicate at IoU 0.9 that NMS at 0.7 must suppress: an NMS that kept it is wrong.
    duplicate = rows((10, 10, 30, 30, 0.9, 0), (10, 10, 30, 28, 0.5, 0))  # IoU 0.9
    record = compare(duplicate[:1], duplicate)
    assert not record["passed"] and record["unexplained"] == 1


def test_the_weakest_boxes_of_a_full_side_may_differ():
    params = DetectionParams(confidence=0.25, iou=0.7, max_detections=3)
    # Both sides full: their third boxes, elsewhere but as weak, fell on either side of the cut.
    served = np.concatenate([REFERENCE[:2], rows((40, 40, 60, 60, 0.4005, 1))])
    record = compare(REFERENCE, served, params)
    assert record["passed"] and record["excused"]["max_detections"] == 2
    stronger = np.concatenate([REFERENCE[:2], rows((40, 40, 60, 60, 0.5, 1))])
    assert not compare(REFERENCE, stronger, params)["passed"]


def test_boxes_clipped_flat_pair_as_their_extents():
    """A box wholly in the padding below a 48 x 80 image is clipped to y1 == y2 == 48 on both
    sides (ultralytics keeps it): no area, but the same box."""
    flat = rows((0, 48, 80, 48, 0.9, 0), (0, 48, 68.4, 48, 0.7, 2), (10, 10, 30, 30, 0.6, 1))
    same = compare(flat, flat[::-1].copy())
    assert same["passed"] and same["paired"] == 3 and same["min_iou"] == 1.0
    shorter = flat.copy()
    shorter[1, 2] = 60.0  # the flat box's extent: 60 / 68.4 = IoU 0.88
    record = compare(flat, shorter)
    assert not record["passed"] and "IoU 0.877" in record["failures"][0]
    elsewhere = flat.copy()
    elsewhere[0, [1, 3]] = 0.0  # flat at the top instead: not the same box
    record = compare(flat, elsewhere)
    assert not record["passed"] and record["unexplained"] == 2
