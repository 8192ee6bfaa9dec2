"""ImagePreprocessor: its evaluation transform, recorded as data, is reproduced without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlp_core.errors import DataError
from mlp_data import image_spec
from mlp_data.image_spec import apply_eval_spec
from mlp_data.image_transforms import AugmentConfig, ImagePreprocessor, ImageTransformConfig
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
    spec = json.loads(json.dumps(preprocessor.eval_spec()))  # what a bundle manifest holds

    for image in real_images:
        expected = preprocessor.eval_transform(image).numpy()
        reproduced = apply_eval_spec(spec, image)
        assert reproduced.dtype == np.float32
        assert (
            reproduced.shape == expected.shape == (preprocessor.channels, *preprocessor.crop_size)
        )
        assert np.abs(reproduced - expected).max() <= TOLERANCE


def test_eval_spec_is_plain_data_and_rebuilds_the_same_transform(
    real_images: list[Image.Image],
) -> None:
    original = ImagePreprocessor(
        ImageTransformConfig(image_size=[20, 16], resize=22, interpolation="bicubic")
    )
    spec = original.eval_spec()
    assert spec == json.loads(json.dumps(spec))
    assert spec["crop_size"] == [20, 16]
    assert spec["resize_size"] == 22
    assert spec["interpolation"] == "bicubic"
    assert spec["channel_order"] == ["R", "G", "B"]
    assert spec["mean"] == pytest.approx([0.485, 0.456, 0.406])

    rebuilt = ImagePreprocessor.from_spec(spec)
    assert rebuilt.eval_spec() == spec
    for image in real_images[:4]:
        assert torch.equal(rebuilt.eval_transform(image), original.eval_transform(image))


def test_a_broken_spec_is_a_data_error_naming_the_key() -> None:
    spec = ImagePreprocessor().eval_spec()
    del spec["crop_size"]
    with pytest.raises(DataError, match="missing key 'crop_size'"):
        ImagePreprocessor.from_spec(spec)
    spec = ImagePreprocessor().eval_spec() | {"interpolation": "cubic-ish"}
    with pytest.raises(DataError, match="interpolation must be one of"):
        apply_eval_spec(spec, Image.new("RGB", (4, 4)))


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


def test_the_reference_module_runs_without_torch() -> None:
    # Loaded from its file, so the package's __init__ (which may import torch) stays out of it:
    # this checks what the module itself needs, for a reader that has only Pillow and numpy.
    code = f"""
import importlib.util, sys
from PIL import Image
spec = importlib.util.spec_from_file_location("image_spec", {str(image_spec.__file__)!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
eval_spec = {ImagePreprocessor(ImageTransformConfig(image_size=8)).eval_spec()!r}
values = module.apply_eval_spec(eval_spec, Image.new("RGB", (12, 10), (255, 0, 0)))
assert values.shape == (3, 8, 8), values.shape
heavy = sorted(m for m in ("torch", "torchvision", "mlp_data") if m in sys.modules)
assert not heavy, heavy
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent
    )
    assert result.returncode == 0, result.stderr
