"""Image preprocessing: the training and evaluation transforms of an image classifier.

Both transforms take a PIL image in any mode and return a float32 ``[C, H, W]`` tensor. The
geometric steps run on the PIL image, so the evaluation transform is Pillow's resize plus an
integer crop: :meth:`mlp_core.image_spec.ImageEvalSpec.apply` reproduces it without torch from
the typed spec that :meth:`ImagePreprocessor.eval_spec` returns.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torchvision.transforms import InterpolationMode, v2

from mlp_core.image_spec import CHANNEL_ORDER, ColorMode, ImageEvalSpec, Interpolation

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# One-channel models get the ImageNet statistics averaged over the three channels.
IMAGENET_GREY_MEAN = (0.449,)
IMAGENET_GREY_STD = (0.226,)
# What ToDtype(float32, scale=True) multiplies uint8 pixels by.
PIXEL_SCALE = 1.0 / 255.0

Size = int | tuple[int, int]


class AugmentConfig(BaseModel):
    """Training-only augmentation; evaluation never augments."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    random_resized_crop: bool = Field(
        default=True, description="else resize and centre crop as in eval"
    )
    crop_scale: tuple[float, float] = Field(default=(0.08, 1.0), description="area fraction range")
    crop_ratio: tuple[float, float] = Field(
        default=(3 / 4, 4 / 3), description="aspect ratio range"
    )
    hflip: float = Field(default=0.5, ge=0, le=1, description="probability of a horizontal flip")
    brightness: float = Field(default=0.0, ge=0)
    contrast: float = Field(default=0.0, ge=0)
    saturation: float = Field(default=0.0, ge=0)
    hue: float = Field(default=0.0, ge=0, le=0.5)

    @field_validator("crop_scale", "crop_ratio")
    @classmethod
    def _ordered_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low <= high:
            raise ValueError(f"expected 0 < low <= high, got {list(value)}")
        return value

    @property
    def jitters(self) -> bool:
        return any((self.brightness, self.contrast, self.saturation, self.hue))


class ImageTransformConfig(BaseModel):
    """Options of :class:`ImagePreprocessor`; image adapters inherit them as their own keys."""

    model_config = ConfigDict(extra="forbid")

    image_size: Size = Field(default=224, description="model input: an int for square, or [H, W]")
    resize: Size | None = Field(
        default=None,
        description="before the centre crop: an int resizes the shorter side, [H, W] exactly; "
        "default: image_size",
    )
    interpolation: Interpolation = "bilinear"
    color_mode: ColorMode = "RGB"
    mean: tuple[float, ...] | None = Field(default=None, description="default: ImageNet's")
    std: tuple[float, ...] | None = Field(default=None, description="default: ImageNet's")
    augment: AugmentConfig = AugmentConfig()

    @field_validator("image_size", "resize")
    @classmethod
    def _positive(cls, value: Size | None) -> Size | None:
        sides = (value,) if isinstance(value, int) else value or ()
        if any(side <= 0 for side in sides):
            raise ValueError(f"sizes must be positive, got {value}")
        return value

    @model_validator(mode="after")
    def _statistics_fit_channels(self) -> ImageTransformConfig:
        channels = len(CHANNEL_ORDER[self.color_mode])
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and len(values) != channels:
                raise ValueError(
                    f"{name} needs {channels} value(s) for color_mode {self.color_mode}, "
                    f"got {list(values)}"
                )
        if self.std is not None and 0 in self.std:
            raise ValueError(f"std must not hold zeros, got {list(self.std)}")
        return self


class ConvertMode:
    """Convert a PIL image to one mode (a class, not a lambda, so DataLoader workers pickle it)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.mode == self.mode else image.convert(self.mode)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.mode!r})"


class PlainTensor:
    """Unwrap torchvision's ``tv_tensors.Image`` so batches hold ordinary tensors."""

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image.as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ImagePreprocessor:
    """Builds the training and evaluation transforms of one :class:`ImageTransformConfig`."""

    def __init__(self, config: ImageTransformConfig | None = None) -> None:
        self.config = config or ImageTransformConfig()
        config = self.config
        self.crop_size = _pair(config.image_size)
        self.resize_size = config.resize if config.resize is not None else config.image_size
        grey = config.color_mode == "L"
        self.mean = config.mean or (IMAGENET_GREY_MEAN if grey else IMAGENET_MEAN)
        self.std = config.std or (IMAGENET_GREY_STD if grey else IMAGENET_STD)
        self.eval_transform = self._eval_transform()
        self.train_transform = self._train_transform()

    @classmethod
    def from_config(cls, config: BaseModel) -> ImagePreprocessor:
        """From any config model that holds the keys of :class:`ImageTransformConfig`."""
        keys = ImageTransformConfig.model_fields
        return cls(ImageTransformConfig(**{key: getattr(config, key) for key in keys}))

    @property
    def channels(self) -> int:
        return len(CHANNEL_ORDER[self.config.color_mode])

    def transform(self, split: str) -> v2.Compose:
        return self.train_transform if split == "train" else self.eval_transform

    def eval_spec(self) -> ImageEvalSpec:
        """The evaluation transform as typed data (``.to_dict()`` is what a bundle holds)."""
        mode = self.config.color_mode
        return ImageEvalSpec(
            color_mode=mode,
            resize_size=self.resize_size,
            interpolation=self.config.interpolation,
            crop_size=self.crop_size,
            scale=PIXEL_SCALE,
            mean=tuple(self.mean),
            std=tuple(self.std),
            channel_order=CHANNEL_ORDER[mode],
        )

    def _eval_transform(self) -> v2.Compose:
        return v2.Compose(
            [
                ConvertMode(self.config.color_mode),
                *self._resize_and_crop(),
                *self._to_normalised_tensor(),
            ]
        )

    def _train_transform(self) -> v2.Compose:
        augment = self.config.augment
        if not augment.enabled:
            return self._eval_transform()
        if augment.random_resized_crop:
            geometry = [
                v2.RandomResizedCrop(
                    list(self.crop_size), augment.crop_scale, augment.crop_ratio, self._mode()
                )
            ]
        else:
            geometry = self._resize_and_crop()
        steps: list[Any] = [ConvertMode(self.config.color_mode), *geometry]
        if augment.hflip > 0:
            steps.append(v2.RandomHorizontalFlip(augment.hflip))
        if augment.jitters:
            steps.append(
                v2.ColorJitter(
                    augment.brightness, augment.contrast, augment.saturation, augment.hue
                )
            )
        return v2.Compose([*steps, *self._to_normalised_tensor()])

    def _resize_and_crop(self) -> list[Any]:
        resize = self.resize_size
        return [
            v2.Resize(resize if isinstance(resize, int) else list(resize), self._mode()),
            v2.CenterCrop(list(self.crop_size)),
        ]

    def _to_normalised_tensor(self) -> list[Any]:
        return [
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(self.mean), list(self.std)),
            PlainTensor(),
        ]

    def _mode(self) -> InterpolationMode:
        # torchvision and Pillow name their filters alike, so the spec holds one name for both.
        return InterpolationMode(self.config.interpolation)


def _pair(size: Size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
