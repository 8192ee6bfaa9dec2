"""The evaluation transform of an image model as plain data, and its reference implementation.

An exporter writes the spec into a model bundle; a server, which has no torch, reads it and must
feed the model exactly what evaluation fed it. :func:`apply_eval_spec` is that reference: Pillow
and numpy only, step for step what ``torchvision.transforms.v2`` does to a PIL image in
:class:`mlp_data.image_transforms.ImagePreprocessor`'s evaluation transform:

1. ``image.convert(color_mode)`` ("RGB" or "L"; Pillow's ITU-R 601-2 luma for "L");
2. resize with Pillow: ``resize_size`` an int resizes the shorter side to it and the longer side
   to ``int(size * long / short)``; a pair ``[h, w]`` resizes to exactly that;
3. centre crop to ``crop_size`` ``[h, w]``: zero padding first where the crop is larger, then
   the top-left corner at ``round((size - crop) / 2)`` (Python's round, halves to even);
4. pixels to float32 times ``scale`` (1/255), then ``(x - mean) / std`` per channel;
5. layout ``CHW`` in ``channel_order``.

This module imports no torch so that it stays runnable wherever Pillow and numpy are.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from mlp_core.errors import DataError

SPEC_KIND = "image"
SPEC_VERSION = 1
COLOR_MODES = ("RGB", "L")
CHANNEL_ORDER = {"RGB": ["R", "G", "B"], "L": ["L"]}
# Pillow's filters by the names torchvision's InterpolationMode uses.
PIL_INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}
REQUIRED_KEYS = (
    "kind",
    "version",
    "color_mode",
    "resize_size",
    "interpolation",
    "crop_size",
    "scale",
    "mean",
    "std",
    "channel_order",
    "layout",
    "dtype",
)


def check_eval_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Return ``spec`` if it is a spec this module can apply; else raise ``DataError``."""
    missing = [key for key in REQUIRED_KEYS if key not in spec]
    problems = [f"missing key {key!r}" for key in missing]
    if not missing:
        problems += _spec_problems(spec)
    if problems:
        raise DataError(
            "invalid image preprocessing spec: " + "; ".join(problems),
            hint="Re-export the model with this version of mlp-data, or fix the manifest.",
        )
    return spec


def _spec_problems(spec: dict[str, Any]) -> list[str]:
    problems = []
    if spec["kind"] != SPEC_KIND or spec["version"] != SPEC_VERSION:
        problems.append(
            f"expected kind {SPEC_KIND!r} version {SPEC_VERSION}, "
            f"got {spec['kind']!r} version {spec['version']!r}"
        )
    mode = spec["color_mode"]
    if mode not in COLOR_MODES:
        problems.append(f"color_mode must be one of {COLOR_MODES}, got {mode!r}")
    elif not len(spec["mean"]) == len(spec["std"]) == len(CHANNEL_ORDER[mode]):
        problems.append(f"mean and std need {len(CHANNEL_ORDER[mode])} values for {mode}")
    if spec["interpolation"] not in PIL_INTERPOLATION:
        problems.append(
            f"interpolation must be one of {sorted(PIL_INTERPOLATION)}, "
            f"got {spec['interpolation']!r}"
        )
    if any(value == 0 for value in spec["std"]):
        problems.append("std must not hold zeros")
    if spec["layout"] != "CHW" or spec["dtype"] != "float32":
        problems.append(
            f"expected layout CHW and dtype float32, got {spec['layout']}, {spec['dtype']}"
        )
    return problems


def resized_size(height: int, width: int, size: int | list[int]) -> tuple[int, int]:
    """The ``(height, width)`` an image of ``height`` x ``width`` is resized to."""
    if isinstance(size, int):
        short, long = min(height, width), max(height, width)
        new_long = int(size * long / short)
        return (size, new_long) if height <= width else (new_long, size)
    new_height, new_width = size
    return int(new_height), int(new_width)


def center_crop(pixels: np.ndarray, crop_height: int, crop_width: int) -> np.ndarray:
    """Centre crop an ``[H, W, C]`` array, zero padding it first where the crop is larger."""
    height, width = pixels.shape[:2]
    if crop_height > height or crop_width > width:
        pad_top = (crop_height - height) // 2 if crop_height > height else 0
        pad_left = (crop_width - width) // 2 if crop_width > width else 0
        pad_bottom = (crop_height - height + 1) // 2 if crop_height > height else 0
        pad_right = (crop_width - width + 1) // 2 if crop_width > width else 0
        pixels = np.pad(pixels, ((pad_top, pad_bottom), (pad_left, pad_right), (0, 0)))
        height, width = pixels.shape[:2]
    top = round((height - crop_height) / 2.0)
    left = round((width - crop_width) / 2.0)
    return pixels[top : top + crop_height, left : left + crop_width]


def apply_eval_spec(spec: dict[str, Any], image: Image.Image) -> np.ndarray:
    """The model input for one PIL image: float32 ``[C, H, W]``, as evaluation produced it."""
    check_eval_spec(spec)
    image = image.convert(spec["color_mode"])
    height, width = resized_size(image.height, image.width, spec["resize_size"])
    image = image.resize((width, height), resample=PIL_INTERPOLATION[spec["interpolation"]])
    pixels = np.asarray(image, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    crop_height, crop_width = spec["crop_size"]
    pixels = center_crop(pixels, crop_height, crop_width)
    values = pixels.astype(np.float32) * np.float32(spec["scale"])
    mean = np.asarray(spec["mean"], dtype=np.float32)
    std = np.asarray(spec["std"], dtype=np.float32)
    values = (values - mean) / std
    return np.ascontiguousarray(values.transpose(2, 0, 1))
