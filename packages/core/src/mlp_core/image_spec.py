"""The evaluation transform of an image model, as typed data, and its one reference ``apply``.

mlp-data writes this spec from its torchvision evaluation transform; an exporter puts it into a
bundle's manifest; a server, which has no torch, reads it back and must feed the model exactly
what evaluation fed it. :meth:`ImageEvalSpec.apply` is that reference, with Pillow and numpy
only, and mlp-data's tests compare its torch transform against it:

1. ``image.convert(color_mode)`` ("RGB" or "L"; Pillow's ITU-R 601-2 luma for "L");
2. geometry, by ``resize_mode``:
   ``resize_crop``: resize with Pillow (an int ``resize_size`` sets the shorter side and the
   longer one becomes ``int(size * long / short)``; a pair ``[h, w]`` sets both), then centre crop
   to ``crop_size`` ``[h, w]``, zero padding first where the crop is larger, the corner at
   ``round((size - crop) / 2)`` (halves to even, as Python rounds);
3. pixels to float32 times ``scale`` (1/255), then ``(x - mean) / std`` per channel;
4. layout ``CHW`` in ``channel_order``.

   ``letterbox`` (detection, as ultralytics' ``LetterBox`` with ``auto=False``): scale by
   ``r = min(h_in / h, w_in / w)`` to ``round(w * r)`` x ``round(h * r)`` (skipped when the size
   is already that) with OpenCV's ``INTER_LINEAR`` geometry (half-pixel centres, no
   antialiasing when shrinking, unlike Pillow's bilinear: what ultralytics feeds its models;
   bit for bit, OpenCV's fixed-point arithmetic included), then pad with ``pad_value`` to ``crop_size``, ``round(d / 2 - 0.1)`` pixels
   before and the rest after on each axis (``resize_size`` equals ``crop_size`` here).
   :meth:`~ImageEvalSpec.letterbox` gives that geometry for one image, and
   :meth:`Letterbox.to_original` maps boxes back into the pixels of the image that was sent;

The geometry is one step chosen by ``resize_mode``, while steps 1, 3 and 4 stay shared. Pillow is imported only by :meth:`~ImageEvalSpec.apply`
(``pip install 'mlp-core[image]'``), so reading and checking a spec needs numpy alone.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt
from pydantic import Field, model_validator

from mlp_core.contract import Contract
from mlp_core.errors import MissingDependencyError

if TYPE_CHECKING:
    from PIL import Image

Pixel = TypeVar("Pixel", bound=np.generic)  # center_crop keeps the dtype it is given

SPEC_KIND = "image"
SPEC_VERSION = 1
ColorMode = Literal["RGB", "L"]
Interpolation = Literal["nearest", "bilinear", "bicubic", "box", "hamming", "lanczos"]
CHANNEL_ORDER: dict[str, tuple[str, ...]] = {"RGB": ("R", "G", "B"), "L": ("L",)}


class ImageEvalSpec(Contract):
    """What evaluation does to one decoded image; read with ``ImageEvalSpec.parse(raw,
    error=...)``, written with :meth:`to_dict`."""

    kind: Literal["image"] = SPEC_KIND
    version: Literal[1] = SPEC_VERSION
    color_mode: ColorMode
    resize_mode: Literal["resize_crop", "letterbox"] = "resize_crop"
    resize_size: int | tuple[int, int] = Field(..., description="shorter side, or [h, w]")
    interpolation: Interpolation = "bilinear"
    crop_size: tuple[int, int]
    pad_value: int = Field(
        default=114, ge=0, le=255, description="letterbox padding (grey, as YOLO)"
    )
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channel_order: tuple[str, ...] = Field(
        (), description="channel names of the model input; empty: the colour mode's"
    )
    layout: Literal["CHW"] = "CHW"
    dtype: Literal["float32"] = "float32"
    input_dtype: Literal["uint8"] = Field(
        default="uint8", description="decoded pixels, before scaling"
    )

    @model_validator(mode="after")
    def _consistent(self) -> ImageEvalSpec:
        channels = CHANNEL_ORDER[self.color_mode]
        if not self.channel_order:
            object.__setattr__(self, "channel_order", channels)
        elif self.channel_order != channels:
            raise ValueError(
                f"channel_order {list(self.channel_order)} does not match color_mode "
                f"{self.color_mode} ({list(channels)})"
            )
        if not len(self.mean) == len(self.std) == len(channels):
            raise ValueError(f"mean and std need {len(channels)} values for {self.color_mode}")
        if any(value == 0 for value in self.std):
            raise ValueError("std must not hold zeros")
        sizes = (self.resize_size,) if isinstance(self.resize_size, int) else self.resize_size
        if any(size <= 0 for size in (*sizes, *self.crop_size)):
            raise ValueError("resize_size and crop_size must be positive")
        if self.resize_mode == "letterbox" and tuple(sizes) != tuple(self.crop_size):
            raise ValueError(
                "letterbox: resize_size must be [h, w] equal to crop_size (the model's input size)"
            )
        if self.resize_mode == "letterbox" and self.interpolation != "bilinear":
            raise ValueError("letterbox: interpolation must be bilinear (OpenCV's INTER_LINEAR)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @property
    def channels(self) -> int:
        return len(CHANNEL_ORDER[self.color_mode])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the model input."""
        return (self.channels, *self.crop_size)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """The ``(height, width)`` an image of ``height`` x ``width`` is resized to."""
        size = self.resize_size
        if isinstance(size, int):
            short, long = min(height, width), max(height, width)
            other = int(size * long / short)
            return (size, other) if height <= width else (other, size)
        return size

    def letterbox(self, height: int, width: int) -> Letterbox:
        """Where an image of ``height`` x ``width`` lands in the model input (letterbox mode)."""
        out_h, out_w = self.crop_size
        ratio = min(out_h / height, out_w / width)
        new_h, new_w = max(round(height * ratio), 1), max(round(width * ratio), 1)
        return Letterbox(
            top=round((out_h - new_h) / 2 - 0.1),
            left=round((out_w - new_w) / 2 - 0.1),
            height=new_h,
            width=new_w,
            source=(height, width),
        )

    def apply(self, image: Image.Image) -> npt.NDArray[np.float32]:
        """The model input for one image: float32 ``[C, H, W]``, as evaluation produced it."""
        resampling = _pil_resampling()
        image = image.convert(self.color_mode)
        if self.resize_mode == "letterbox":
            pixels = self._letterboxed(image)
        else:
            height, width = self.resized_size(image.height, image.width)
            image = image.resize((width, height), resample=resampling[self.interpolation])
            pixels = np.asarray(image, dtype=np.uint8)
            if pixels.ndim == 2:
                pixels = pixels[:, :, None]
            pixels = center_crop(pixels, *self.crop_size)
        values = pixels.astype(np.float32) * np.float32(self.scale)
        values = (values - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(np.transpose(values, (2, 0, 1)), dtype=np.float32)

    def _letterboxed(self, image: Image.Image) -> npt.NDArray[np.uint8]:
        box = self.letterbox(image.height, image.width)
        pixels = np.asarray(image, dtype=np.uint8)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        if (image.height, image.width) != (box.height, box.width):
            pixels = linear_resize(pixels, box.height, box.width)
        canvas = np.full((*self.crop_size, pixels.shape[2]), self.pad_value, dtype=np.uint8)
        canvas[box.top : box.top + box.height, box.left : box.left + box.width] = pixels
        return canvas


@dataclass(frozen=True)
class Letterbox:
    """One image's place in a letterboxed model input: scaled to ``height`` x ``width``, its
    top-left corner at (``top``, ``left``); ``source`` is its own size (height, width)."""

    top: int
    left: int
    height: int
    width: int
    source: tuple[int, int]

    def to_original(self, boxes: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
        """``[N, 4]`` x1, y1, x2, y2 boxes in model-input pixels -> in the source image's
        pixels, clipped to it (as ultralytics' ``scale_boxes``: a gain per axis)."""
        out: npt.NDArray[np.float32] = np.array(boxes, dtype=np.float32)
        height, width = self.source
        # One gain per axis, as ultralytics' scale_boxes: each side was rounded on its own.
        xs = (out[:, [0, 2]] - self.left) / (self.width / width)
        ys = (out[:, [1, 3]] - self.top) / (self.height / height)
        out[:, [0, 2]] = np.minimum(np.maximum(xs, 0), width)
        out[:, [1, 3]] = np.minimum(np.maximum(ys, 0), height)
        return out


def linear_resize(pixels: npt.NDArray[np.uint8], height: int, width: int) -> npt.NDArray[np.uint8]:
    """Resize ``[H, W, C]`` uint8 pixels as OpenCV's ``cv2.resize(..., INTER_LINEAR)`` does, to
    the bit: each output pixel interpolates its two nearest source pixels per axis at
    half-pixel centres (no antialiasing when shrinking), in OpenCV's fixed point.

    Why to the bit: a detection network's scores move by up to 0.1 when a few pixels of its
    input are one grey level apart, so a served upload must get exactly ultralytics' input.
    OpenCV's arithmetic (resize.cpp, 8-bit): weights are ``round(w * 2048)`` from float32
    fractions; the horizontal pass sums in int32; the vertical pass is its SIMD form,
    ``((h0 >> 4) * b0 >> 16) + ((h1 >> 4) * b1 >> 16)`` rounded by ``(v + 2) >> 2``; columns
    before the first or past the last centre take that pixel alone, rows keep their weights
    and read the edge row twice. (A halving is OpenCV's area average there, the same values.)
    """
    rows_first, rows_second, beta0, beta1 = _fixed_point_taps(pixels.shape[0], height, False)
    cols_first, cols_second, alpha0, alpha1 = _fixed_point_taps(pixels.shape[1], width, True)
    horizontal = [
        (source[:, cols_first] * alpha0[:, None] + source[:, cols_second] * alpha1[:, None]) >> 4
        for source in (pixels[rows_first].astype(np.int32), pixels[rows_second].astype(np.int32))
    ]
    vertical = ((horizontal[0] * beta0[:, None, None]) >> 16) + (
        (horizontal[1] * beta1[:, None, None]) >> 16
    )
    rounded = (vertical + 2) >> 2
    return np.minimum(np.maximum(rounded, 0), 255).astype(np.uint8)


def _fixed_point_taps(
    size: int, out: int, clamp_edges: bool
) -> tuple[
    npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.int32], npt.NDArray[np.int32]
]:
    """OpenCV's source indices and 11-bit weights along one axis of a linear resize."""
    centres = ((np.arange(out) + 0.5) * (1.0 / (out / size)) - 0.5).astype(np.float32)
    first = np.floor(centres).astype(np.intp)
    fraction = (centres - first.astype(np.float32)).astype(np.float32)
    if clamp_edges:  # OpenCV's columns outside the centres: the edge pixel at full weight
        outside = (first < 0) | (first >= size - 1)
        fraction[outside] = 0.0
        first = np.minimum(np.maximum(first, 0), size - 1)
    weight1 = np.rint(fraction * 2048).astype(np.int32)
    complement = (1.0 - fraction).astype(np.float32)  # in float32, as OpenCV
    weight0 = np.rint(complement * 2048).astype(np.int32)
    last = size - 1  # rows past an edge read the edge row (OpenCV clips row indices)
    return (
        np.minimum(np.maximum(first, 0), last),
        np.minimum(np.maximum(first + 1, 0), last),
        weight0,
        weight1,
    )


def center_crop(pixels: npt.NDArray[Pixel], height: int, width: int) -> npt.NDArray[Pixel]:
    """Centre crop ``[H, W, C]`` pixels to ``height`` x ``width``, zero padding first where the
    crop is larger (the odd pixel of padding after, as torchvision pads)."""
    pad_h, pad_w = max(height - pixels.shape[0], 0), max(width - pixels.shape[1], 0)
    if pad_h or pad_w:
        pixels = np.pad(
            pixels, ((pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2), (0, 0))
        )
    top = round((pixels.shape[0] - height) / 2.0)
    left = round((pixels.shape[1] - width) / 2.0)
    return pixels[top : top + height, left : left + width]


@functools.cache
def _pil_resampling() -> dict[str, Any]:
    try:
        from PIL import Image
    except ImportError:
        raise MissingDependencyError("applying an image spec", "mlp-core[image]") from None
    # Pillow's filters by the names torchvision's InterpolationMode uses.
    return {
        "nearest": Image.Resampling.NEAREST,
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
        "box": Image.Resampling.BOX,
        "hamming": Image.Resampling.HAMMING,
        "lanczos": Image.Resampling.LANCZOS,
    }
