"""mlp_serve.detection: the numpy NMS against a textbook reference and known boxes; the request
thresholds; the padded Triton-convention outputs."""

from __future__ import annotations

import numpy as np
import pytest
from detection_serve_helpers import LABELS, as_input, painted, raw_head, reference_nms
from hypothesis import given, settings
from hypothesis import strategies as st

from mlp_serve.detection import (
    MAX_WH,
    DetectionParams,
    detection_outputs,
    non_max_suppression,
)
from mlp_serve.errors import InvalidInput


def random_head(seed: int, batch: int, classes: int, anchors: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    head = np.empty((batch, 4 + classes, anchors), dtype=np.float32)
    head[:, :2] = rng.uniform(0, 64, (batch, 2, anchors))  # centres
    head[:, 2:4] = rng.uniform(2, 30, (batch, 2, anchors))  # sizes: many overlaps
    # Distinct scores: equal ones have no defined order, in NMS or in its reference (uniform
    # draws cast to float32 tied about once in 25 runs of this test, and picked different
    # boxes at the max_detections cut).
    distinct = rng.choice(2**20, size=batch * classes * anchors, replace=False) / 2**20
    head[:, 4:] = distinct.reshape(batch, classes, anchors) ** 3
    return head


def assert_same(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for mine, theirs in zip(got, want):
        assert mine.shape == theirs.shape
        np.testing.assert_allclose(mine, theirs, atol=1e-4)


@settings(max_examples=60, deadline=None, derandomize=True)  # the same examples in every run
@given(
    seed=st.integers(0, 2**31),
    batch=st.integers(1, 3),
    classes=st.integers(1, 4),
    anchors=st.integers(1, 120),
    confidence=st.floats(0.01, 1.0),
    iou=st.floats(0.05, 1.0),
    max_detections=st.integers(1, 50),
)
def test_nms_equals_the_textbook_reference(
    seed, batch, classes, anchors, confidence, iou, max_detections
):
    head = random_head(seed, batch, classes, anchors)
    got = non_max_suppression(head, confidence, iou, max_detections)
    assert_same(got, reference_nms(head, confidence, iou, max_detections))


def test_known_boxes_from_painted_cells():
    # Two red cells side by side (IoU 1/3), a green one next to them, a dim blue one.
    pixels = painted(
        {(2, 2): (250, 0, 0), (2, 3): (200, 0, 0), (2, 4): (0, 240, 0), (6, 6): (0, 0, 40)}
    )
    head = raw_head(as_input(pixels))
    found = non_max_suppression(head, 0.25, 0.7, 300)[0]
    # Best first; the blue cell (40/255 = 0.16) is under the confidence.
    np.testing.assert_allclose(found[:, 4], [250 / 255, 240 / 255, 200 / 255], rtol=1e-6)
    assert found[:, 5].tolist() == [0, 1, 0]
    np.testing.assert_allclose(found[:, :4], [[12, 12, 28, 28], [28, 12, 44, 28], [20, 12, 36, 28]])
    # At IoU 0.3 the weaker red box goes; the green one stays (NMS is per class).
    strict = non_max_suppression(head, 0.25, 0.3, 300)[0]
    assert strict[:, 5].tolist() == [0, 1]
    # A lower confidence finds the blue cell; max_detections keeps the best ones.
    assert non_max_suppression(head, 0.1, 0.7, 300)[0][:, 5].tolist() == [0, 1, 0, 2]
    assert non_max_suppression(head, 0.1, 0.7, 2)[0][:, 5].tolist() == [0, 1]


def test_confidence_is_strict_and_an_empty_image_has_no_rows():
    head = raw_head(as_input(painted({(0, 0): (255, 0, 0)})))
    assert len(non_max_suppression(head, 1.0, 0.7, 10)[0]) == 0  # 1.0 is not above 1.0
    empty = non_max_suppression(raw_head(as_input(painted({}))), 0.25, 0.7, 10)
    assert empty[0].shape == (0, 6) and empty[0].dtype == np.float32


def test_classes_never_suppress_each_other_even_far_out():
    # Identical boxes of two classes, beyond MAX_WH: still two detections (the offset is per
    # class, and the boxes of class 1 move by MAX_WH, clear of class 0's).
    head = np.zeros((1, 6, 2), dtype=np.float32)
    head[0, :4] = [[5000, 5000], [5000, 5000], [100, 100], [100, 100]]
    head[0, 4:, 0] = [0.9, 0.0]
    head[0, 4:, 1] = [0.0, 0.8]
    found = non_max_suppression(head, 0.25, 0.5, 10)[0]
    assert found[:, 5].tolist() == [0, 1]
    assert MAX_WH == 7680


def test_a_head_of_the_wrong_shape_is_refused():
    with pytest.raises(InvalidInput, match=r"expected \[batch, 4 \+ classes, anchors\]"):
        non_max_suppression(np.zeros((1, 4, 10), np.float32))


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"confidence": 0}, "parameter 'confidence' must be in (0, 1]"),
        ({"confidence": 1.5}, "parameter 'confidence' must be in (0, 1]"),
        ({"confidence": "nan"}, "parameter 'confidence' must be in (0, 1]"),
        ({"confidence": "high"}, "parameter 'confidence': expected a number"),
        ({"iou": -0.1}, "parameter 'iou' must be in (0, 1]"),
        ({"iou": True}, "parameter 'iou': expected a number"),
        ({"max_detections": 0}, "parameter 'max_detections' must be a whole number >= 1"),
        ({"max_detections": 2.5}, "parameter 'max_detections' must be a whole number >= 1"),
        ({"max_detections": "inf"}, "parameter 'max_detections' must be a whole number >= 1"),
    ],
)
def test_bad_thresholds_name_the_parameter(parameters, message):
    with pytest.raises(InvalidInput) as caught:
        DetectionParams().override(parameters)
    assert message in caught.value.message


def test_thresholds_override_the_defaults_and_read_query_text():
    defaults = DetectionParams(0.3, 0.6, 100)
    assert defaults.override(None) == defaults
    assert defaults.override({"priority": 3}) == defaults  # others' parameters: not ours
    assert defaults.override({"confidence": "0.5", "max_detections": 7.0}) == DetectionParams(
        0.5, 0.6, 7
    )
    assert defaults.override({"iou": 1}) == DetectionParams(0.3, 1.0, 100)


def test_outputs_are_padded_to_the_most_detections_with_labels():
    first = np.array([[1, 2, 70, 4, 0.9, 2], [0, 0, 5, 5, 0.5, 0]], dtype=np.float32)
    second = np.zeros((0, 6), dtype=np.float32)
    out = detection_outputs([first, second], LABELS, clip_to=(64, 64))
    assert out["num_detections"].tolist() == [2, 0]
    assert out["num_detections"].dtype == np.int32
    assert out["detection_boxes"].shape == (2, 2, 4)
    assert out["detection_boxes"][0, 0].tolist() == [1, 2, 64, 4]  # clipped to the width
    assert out["detection_scores"].dtype == np.float32
    np.testing.assert_allclose(out["detection_scores"], [[0.9, 0.5], [0, 0]])
    assert out["detection_classes"].tolist() == [[2, 0], [0, 0]]
    assert out["detection_labels"].tolist() == [[b"blue", b"red"], [b"", b""]]
    # Nothing found anywhere: K = 0, and a class past the labels is named by its number.
    assert detection_outputs([second], LABELS)["detection_boxes"].shape == (1, 0, 4)
    unnamed = detection_outputs([first], None)["detection_labels"]
    assert unnamed.tolist() == [[b"2", b"0"]]
