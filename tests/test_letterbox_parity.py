"""The image spec's letterbox against ultralytics' own: the server must feed a detection model
what ultralytics' predict feeds it, for images of any size."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mlp_core.image_spec import ImageEvalSpec
from mlp_models.ultralytics_env import import_ultralytics, preserved_threads

SPEC = ImageEvalSpec(
    color_mode="RGB",
    resize_mode="letterbox",
    resize_size=(64, 64),
    crop_size=(64, 64),
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
)


@pytest.mark.parametrize("size", [(64, 128), (30, 90), (200, 150), (48, 48), (17, 301), (64, 64)])
def test_letterbox_matches_ultralytics_pixel_for_pixel(size):
    import_ultralytics()
    with preserved_threads():
        from ultralytics.data.augment import LetterBox

        pixels = np.random.default_rng(sum(size)).integers(0, 256, (*size, 3), dtype=np.uint8)
        theirs = LetterBox((64, 64), auto=False)(image=np.ascontiguousarray(pixels[:, :, ::-1]))
    expected = theirs[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) / 255
    ours = SPEC.apply(Image.fromarray(pixels))
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() <= 1e-6  # the same pixels: only the 1/255 rounding


@pytest.mark.parametrize("size", [(48, 80), (30, 90), (200, 300), (7, 5)])
def test_boxes_map_back_as_ultralytics_scale_boxes(size):
    import_ultralytics()
    with preserved_threads():
        from ultralytics.utils.ops import scale_boxes

        boxes = np.array([[3.0, 10.0, 40.0, 50.0], [0.0, 0.0, 64.0, 64.0]], dtype=np.float32)
        theirs = scale_boxes((64, 64), boxes.copy(), size)
    ours = SPEC.letterbox(*size).to_original(boxes)
    assert np.allclose(ours, theirs, atol=1e-4)
