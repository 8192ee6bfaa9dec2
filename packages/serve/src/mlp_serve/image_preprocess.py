"""An image model's evaluation transform, replayed from the bundle's ``preprocessing`` spec.

The spec is what evaluation did to each image (written by the exporter); the server has no torch
and must feed the model exactly that, with Pillow and numpy:

1. convert to ``color_mode`` ("RGB", or "L" with Pillow's ITU-R 601-2 luma);
2. resize: an int ``resize_size`` sets the shorter side (the longer one becomes
   ``int(size * long / short)``), a pair ``[h, w]`` sets both, with the named Pillow filter;
3. centre crop to ``crop_size`` ``[h, w]``, zero padding first where the crop is larger, the
   corner at ``round((size - crop) / 2)`` (halves to even, as Python rounds);
4. float32 pixels times ``scale``, then ``(x - mean) / std`` per channel;
5. ``CHW`` layout.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from mlp_serve.errors import BundleError, InvalidInput

SPEC_KIND = "image"
SPEC_VERSION = 1
CHANNELS = {"RGB": 3, "L": 1}
FORMATS = ("JPEG", "PNG")
FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}
REQUIRED = (
    "kind",
    "version",
    "color_mode",
    "resize_size",
    "interpolation",
    "crop_size",
    "scale",
    "mean",
    "std",
    "layout",
    "dtype",
)


def check_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` if this module can apply it, else a :class:`BundleError` listing the problems."""
    problems = [f"missing key {key!r}" for key in REQUIRED if key not in spec]
    if not problems:
        if spec["kind"] != SPEC_KIND or spec["version"] != SPEC_VERSION:
            problems.append(
                f"expected kind {SPEC_KIND!r} version {SPEC_VERSION}, got "
                f"{spec['kind']!r} version {spec['version']!r}"
            )
        channels = CHANNELS.get(spec["color_mode"])
        if channels is None:
            problems.append(f"color_mode must be one of {list(CHANNELS)}")
        elif not len(spec["mean"]) == len(spec["std"]) == channels:
            problems.append(f"mean and std need {channels} values for {spec['color_mode']}")
        if spec["interpolation"] not in FILTERS:
            problems.append(f"interpolation must be one of {sorted(FILTERS)}")
        if any(value == 0 for value in spec["std"]):
            problems.append("std must not hold zeros")
        if spec["layout"] != "CHW" or spec["dtype"] != "float32":
            problems.append("only layout CHW and dtype float32 are supported")
        if spec.get("input_dtype", "uint8") != "uint8":
            problems.append("only input_dtype uint8 is supported")
    if problems:
        raise BundleError(
            "the bundle's image preprocessing spec cannot be applied: " + "; ".join(problems),
            hint="Export the model again with this version of mlp.",
        )
    return spec


def decode_image(data: bytes, what: str = "the upload") -> Image.Image:
    """A JPEG or PNG from its bytes; anything else is an :class:`InvalidInput`."""
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
        image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as exc:
        raise InvalidInput(f"{what} is not a readable JPEG or PNG image: {exc}") from None
    return image


def resized_size(height: int, width: int, size: int | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        short, long = min(height, width), max(height, width)
        other = int(size * long / short)
        return (size, other) if height <= width else (other, size)
    return int(size[0]), int(size[1])


def center_crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre crop ``[H, W, C]`` pixels to ``height`` x ``width``, padding with zeros first."""
    pad_h, pad_w = max(height - pixels.shape[0], 0), max(width - pixels.shape[1], 0)
    if pad_h or pad_w:
        # The odd pixel of padding goes after, as torchvision pads.
        pixels = np.pad(
            pixels, ((pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2), (0, 0))
        )
    top = round((pixels.shape[0] - height) / 2.0)
    left = round((pixels.shape[1] - width) / 2.0)
    return pixels[top : top + height, left : left + width]


def preprocess(spec: dict[str, Any], image: Image.Image) -> np.ndarray:
    """The model input for one image: float32 ``[C, H, W]``."""
    check_spec(spec)
    image = image.convert(spec["color_mode"])
    height, width = resized_size(image.height, image.width, spec["resize_size"])
    image = image.resize((width, height), resample=FILTERS[spec["interpolation"]])
    pixels = np.asarray(image, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    crop_height, crop_width = spec["crop_size"]
    pixels = center_crop(pixels, int(crop_height), int(crop_width))
    values = pixels.astype(np.float32) * np.float32(spec["scale"])
    values = (values - np.asarray(spec["mean"], np.float32)) / np.asarray(spec["std"], np.float32)
    return np.ascontiguousarray(values.transpose(2, 0, 1))
