"""ImagePreprocessor: its evaluation transform, recorded as an ``mlp_core.image_spec`` spec, is
reproduced without torch by the spec's reference ``apply``.

That the reference needs no torch is the import contract "mlp_core stands alone" (lint-imports,
exercised by tests/test_package_edges.py), not a test of this package.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mlp_core.image_spec import ImageEvalSpec
from mlp_data.image.transforms import AugmentConfig, ImagePreprocessor, ImageTransformConfig
from mlp_data.synthetic import write_digits_folder, write_shapes_dataset

# The torch pipeline and the numpy reference share Pillow's resize and an integer crop; they can
# differ only in float32 rounding of the scale and normalisation (~1e-7). One grey level is
# 1/255/std > 0.017 after normalisation, so 1e-5 would catch any off-by-one pixel or shift.
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def real_images(tmp_path_factory: pytest.TempPathFactory) -> list[Image.Image]:
    root = tmp_path_factory.mktemp("images")
    digits = write_digits_folder(root / "digits", image_size=20, limit=6)
    shapes = write_shapes_dataset(root / "shapes", n_train=4, n_val=0, image_size=48)
    images = [Image.open(p).copy() for p in sorted(digits.rglob("*.png"))]
    images += [Image.open(p).copy() for p in sorted(shapes.parent.rglob("*.png"))]
    # Non-square views of the same real pixels exercise the shorter-side resize and the crop
    # anchor in both orientations.
    images += [images[-1].crop((0, 5, 48, 36)), images[-2].crop((7, 0, 40, 48))]
    return images


CONFIGS = [
    {"image_size": 16},
    {"image_size": 24, "resize": 28, "interpolation": "bicubic"},
    {"image_size": [18, 14], "resize": 21, "interpolation": "nearest"},
    {"image_size": [20, 26], "resize": [22, 30], "interpolation": "lanczos"},
    # The crop is larger than the resized image: zero padding, with an odd difference.
    {"image_size": 25, "resize": [20, 18]},
    {"image_size": 16, "color_mode": "L", "mean": [0.5], "std": [0.25]},
]


@pytest.mark.parametrize("options", CONFIGS, ids=lambda options: json.dumps(options))
def test_numpy_reference_matches_the_torchvision_eval_transform(
    real_images: list[Image.Image], options: dict
) -> None:
    preprocessor = ImagePreprocessor(ImageTransformConfig(**options))
    # Through JSON, as a bundle's manifest holds it and a server reads it back.
    spec = ImageEvalSpec.parse(json.loads(json.dumps(preprocessor.eval_spec().to_dict())))

    for image in real_images:
        expected = preprocessor.eval_transform(image).numpy()
        reproduced = spec.apply(image)
        assert reproduced.dtype == np.float32
        assert (
            reproduced.shape == expected.shape == (preprocessor.channels, *preprocessor.crop_size)
        )
        assert np.abs(reproduced - expected).max() <= TOLERANCE


def test_eval_spec_records_the_options_as_plain_data() -> None:
    preprocessor = ImagePreprocessor(
        ImageTransformConfig(image_size=[20, 16], resize=22, interpolation="bicubic")
    )
    spec = preprocessor.eval_spec().to_dict()
    assert spec == json.loads(json.dumps(spec))
    # The keys of the 0.1 spec, which existing bundles hold, plus resize_mode and pad_value.
    assert spec == {
        "kind": "image",
        "version": 1,
        "color_mode": "RGB",
        "resize_mode": "resize_crop",
        "resize_size": 22,
        "interpolation": "bicubic",
        "crop_size": [20, 16],
        "pad_value": 114,
        "input_dtype": "uint8",
        "scale": 1 / 255,
        "mean": pytest.approx([0.485, 0.456, 0.406]),
        "std": pytest.approx([0.229, 0.224, 0.225]),
        "channel_order": ["R", "G", "B"],
        "layout": "CHW",
        "dtype": "float32",
    }
    grey = ImagePreprocessor(ImageTransformConfig(image_size=8, color_mode="L")).eval_spec()
    assert grey.channel_order == ("L",) and grey.input_shape == (1, 8, 8)
    assert grey.resize_size == 8


def test_training_augments_and_evaluation_does_not(real_images: list[Image.Image]) -> None:
    image = real_images[-3]
    flip_only = ImagePreprocessor(
        ImageTransformConfig(
            image_size=32, augment=AugmentConfig(random_resized_crop=False, hflip=1.0)
        )
    )
    assert torch.equal(flip_only.train_transform(image), flip_only.eval_transform(image).flip(-1))

    disabled = ImagePreprocessor(ImageTransformConfig(augment=AugmentConfig(enabled=False)))
    assert torch.equal(disabled.train_transform(image), disabled.eval_transform(image))

    torch.manual_seed(0)
    jitter = ImagePreprocessor(
        ImageTransformConfig(image_size=32, augment=AugmentConfig(brightness=0.5, hue=0.1))
    )
    first, second = jitter.train_transform(image), jitter.train_transform(image)
    assert first.shape == second.shape == (3, 32, 32)
    assert not torch.equal(first, second)
    assert torch.equal(jitter.eval_transform(image), jitter.eval_transform(image))
