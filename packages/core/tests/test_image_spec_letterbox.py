"""The letterbox mode of the image spec: detection's geometry, and boxes mapped back."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mlp_core.image_spec import ImageEvalSpec, linear_resize


def spec(size=(64, 64), **changes) -> ImageEvalSpec:
    raw = {
        "color_mode": "RGB",
        "resize_mode": "letterbox",
        "resize_size": size,
        "crop_size": size,
        "mean": (0.0, 0.0, 0.0),
        "std": (1.0, 1.0, 1.0),
    }
    return ImageEvalSpec(**{**raw, **changes})


def test_a_wide_image_is_scaled_to_the_width_and_padded_grey_above_and_below():
    image = Image.fromarray(np.full((30, 90, 3), 200, np.uint8))
    values = spec().apply(image)
    assert values.shape == (3, 64, 64)
    box = spec().letterbox(30, 90)
    assert (box.height, box.width, box.top, box.left) == (21, 64, 21, 0)
    column = values[0, :, 32]
    assert np.allclose(column[: box.top], 114 / 255)
    assert np.allclose(column[box.top : box.top + box.height], 200 / 255)
    assert np.allclose(column[box.top + box.height :], 114 / 255)


def test_an_image_of_the_model_size_is_left_as_it_is():
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    values = spec().apply(Image.fromarray(pixels))
    assert np.allclose(values, pixels.transpose(2, 0, 1).astype(np.float32) / 255, atol=1e-7)


def test_boxes_go_back_to_the_pixels_of_the_image_that_was_sent():
    box = spec((64, 64)).letterbox(100, 200)  # ratio 0.32: 32 x 64, 16 rows of padding above
    assert (box.height, box.width, box.top, box.left) == (32, 64, 16, 0)
    inside = np.array([[0.0, 16.0, 32.0, 32.0], [-5.0, 0.0, 70.0, 64.0]])
    back = box.to_original(inside)
    assert np.allclose(back[0], [0.0, 0.0, 100.0, 50.0])
    assert np.allclose(back[1], [0.0, 0.0, 200.0, 100.0])  # clipped to the image


def test_letterbox_needs_the_resize_and_crop_sizes_equal():
    with pytest.raises(ValueError, match="letterbox"):
        spec(resize_size=(32, 32), crop_size=(64, 64))


def test_the_pad_value_is_a_pixel_value():
    with pytest.raises(ValueError, match="pad_value"):
        spec(pad_value=300)
    assert spec(pad_value=0).to_dict()["pad_value"] == 0


def test_shrinking_interpolates_the_two_nearest_pixels_without_antialiasing():
    # OpenCV's INTER_LINEAR (what ultralytics letterboxes with): halving takes the mean of each
    # pair; Pillow's bilinear would blur over four pixels and give other values.
    row = np.array([[0, 100, 200, 40]], dtype=np.uint8)[:, :, None]
    assert linear_resize(row, 1, 2)[0, :, 0].tolist() == [50, 120]
    grown = linear_resize(np.array([[0, 100]], dtype=np.uint8)[:, :, None], 1, 4)
    assert grown[0, :, 0].tolist() == [0, 25, 75, 100]


def test_letterbox_interpolation_is_bilinear_only():
    with pytest.raises(ValueError, match="bilinear"):
        spec(interpolation="bicubic")
