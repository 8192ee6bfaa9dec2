"""mlp_core.image_spec: the evaluation transform as data, and its reference apply."""

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from mlp_core.errors import ConfigError, DataError
from mlp_core.image_spec import ImageEvalSpec, center_crop

RGB = {
    "color_mode": "RGB",
    "resize_size": 4,
    "crop_size": [2, 4],
    "mean": [0.5, 0.25, 0.0],
    "std": [0.5, 0.25, 1.0],
}


def test_parse_fills_the_defaults():
    spec = ImageEvalSpec.parse(RGB)
    assert spec.kind == "image" and spec.version == 1
    assert spec.resize_mode == "resize_crop" and spec.interpolation == "bilinear"
    assert spec.scale == pytest.approx(1 / 255)
    assert spec.channel_order == ("R", "G", "B")  # derived from the colour mode
    assert (spec.layout, spec.dtype, spec.input_dtype) == ("CHW", "float32", "uint8")
    assert spec.channels == 3 and spec.input_shape == (3, 2, 4)


def test_to_dict_round_trips():
    spec = ImageEvalSpec.parse(RGB)
    written = spec.to_dict()
    assert written["channel_order"] == ["R", "G", "B"] and written["crop_size"] == [2, 4]
    assert ImageEvalSpec.parse(written) == spec


def test_a_given_channel_order_must_match_the_colour_mode():
    assert ImageEvalSpec.parse({**RGB, "channel_order": ["R", "G", "B"]}).channels == 3
    with pytest.raises(DataError, match=r"channel_order \['B', 'G', 'R'\] does not match"):
        ImageEvalSpec.parse({**RGB, "channel_order": ["B", "G", "R"]})


def test_errors_name_every_bad_field_in_the_callers_error_type():
    raw = {**RGB, "color_mode": "CMYK", "interpolation": "cubic"}
    del raw["crop_size"]
    with pytest.raises(ConfigError) as caught:
        ImageEvalSpec.parse(raw, error=ConfigError, hint="Re-export the run.", source="manifest")
    message = caught.value.message
    assert message.startswith("invalid manifest:")
    assert "color_mode" in message and "interpolation" in message and "crop_size" in message
    assert caught.value.hint == "Re-export the run."


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"mean": [0.5]}, "mean and std need 3 values"),
        ({"std": [0.5, 0.0, 1.0]}, "std must not hold zeros"),
        ({"crop_size": [0, 4]}, "must be positive"),
        ({"input_dtype": "float32"}, "input_dtype"),
        ({"extra": 1}, "extra"),
    ],
)
def test_inconsistent_specs_are_refused(change, problem):
    with pytest.raises(DataError, match=problem):
        ImageEvalSpec.parse({**RGB, **change})


def test_a_spec_is_frozen():
    spec = ImageEvalSpec.parse(RGB)
    with pytest.raises(ValidationError):
        spec.scale = 1.0  # type: ignore[misc]  # the assignment under test is refused


def test_resized_size_sets_the_shorter_side_or_both():
    spec = ImageEvalSpec.parse(RGB)  # resize_size 4: the shorter side
    assert spec.resized_size(10, 5) == (8, 4)  # portrait: int(4 * 10 / 5) = 8
    assert spec.resized_size(5, 10) == (4, 8)
    assert spec.resized_size(6, 9) == (4, 6)
    both = ImageEvalSpec.parse({**RGB, "resize_size": [3, 7]})
    assert both.resized_size(100, 20) == (3, 7)


def test_apply_on_a_tiny_image_matches_a_hand_computation():
    # A 4 x 6 image is already at resize_size 4 (Pillow leaves it untouched); the 2 x 4 centre
    # crop starts at row round(2 / 2) = 1 and column round(2 / 2) = 1.
    pixels = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 3
    spec = ImageEvalSpec.parse(RGB)
    out = spec.apply(Image.fromarray(pixels, "RGB"))
    assert out.dtype == np.float32 and out.shape == (3, 2, 4) and out.flags.c_contiguous
    crop = pixels[1:3, 1:5].astype(np.float64) / 255.0
    for channel, (mean, std) in enumerate(zip(RGB["mean"], RGB["std"])):
        np.testing.assert_allclose(out[channel], (crop[:, :, channel] - mean) / std, atol=1e-6)
    # One value by hand: row 1, column 1, green is pixel 3 * (1 * 18 + 1 * 3 + 1) = 66.
    assert out[1, 0, 0] == pytest.approx((66 / 255 - 0.25) / 0.25, abs=1e-6)


def test_apply_converts_the_colour_mode_and_pads_a_larger_crop():
    # A 2 x 2 grey image, resized to [2, 2] (unchanged), centre-cropped to 3 x 4: one row of zero
    # padding after (the odd one), one column before and after.
    grey = np.array([[10, 20], [30, 40]], dtype=np.uint8)
    spec = ImageEvalSpec.parse(
        {"color_mode": "L", "resize_size": [2, 2], "crop_size": [3, 4], "mean": [0.0], "std": [1.0]}
    )
    out = spec.apply(Image.fromarray(np.stack([grey] * 3, axis=-1), "RGB"))  # RGB in, L out
    expected = np.zeros((1, 3, 4), np.float32)
    expected[0, 0:2, 1:3] = grey / 255.0
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_center_crop_keeps_the_dtype_and_rounds_half_to_even():
    pixels = np.arange(5 * 5, dtype=np.int16).reshape(5, 5, 1)
    crop = center_crop(pixels, 2, 2)  # (5 - 2) / 2 = 1.5 rounds to 2
    assert crop.dtype == np.int16
    np.testing.assert_array_equal(crop[:, :, 0], [[12, 13], [17, 18]])
