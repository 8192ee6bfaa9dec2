"""The dataset generators write real, deterministic files whose labels match their pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from mlp_data.synthetic import (
    BACKGROUND_MAX,
    SHAPE_MIN,
    SHAPE_NAMES,
    write_digits_folder,
    write_shapes_dataset,
)


def file_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_digits_folder_holds_every_class_as_greyscale_pngs(tmp_path: Path) -> None:
    root = write_digits_folder(tmp_path / "a", image_size=10, limit=50)
    assert root == tmp_path / "a"
    images = sorted(root.rglob("*.png"))
    assert len(images) == 50
    assert sorted(p.name for p in root.iterdir()) == [str(d) for d in range(10)]
    with Image.open(images[0]) as image:
        assert (image.mode, image.size) == ("L", (10, 10))
        pixels = np.asarray(image)
    assert pixels.min() < 30 and pixels.max() > 200  # ink on paper, not a blank square
    assert file_bytes(root) == file_bytes(
        write_digits_folder(tmp_path / "b", image_size=10, limit=50)
    )


def test_shapes_are_deterministic_for_a_seed(tmp_path: Path) -> None:
    first = write_shapes_dataset(tmp_path / "a", n_train=6, n_val=2, image_size=24, seed=5)
    again = write_shapes_dataset(tmp_path / "b", n_train=6, n_val=2, image_size=24, seed=5)
    other = write_shapes_dataset(tmp_path / "c", n_train=6, n_val=2, image_size=24, seed=6)
    assert file_bytes(first.parent) == file_bytes(again.parent)
    assert file_bytes(first.parent) != file_bytes(other.parent)
    # Each split has its own generator: more validation images leave training unchanged.
    more_val = write_shapes_dataset(tmp_path / "d", n_train=6, n_val=5, image_size=24, seed=5)
    train = {k: v for k, v in file_bytes(first.parent).items() if "train" in k}
    assert train == {k: v for k, v in file_bytes(more_val.parent).items() if "train" in k}


def test_shapes_labels_match_the_pixels_and_some_images_are_empty(tmp_path: Path) -> None:
    data_yaml = write_shapes_dataset(tmp_path, n_train=16, n_val=4, image_size=40, seed=2)
    document = yaml.safe_load(data_yaml.read_text())
    assert document["names"] == dict(enumerate(SHAPE_NAMES))
    assert (document["train"], document["val"]) == ("images/train", "images/val")

    missing_labels = empty_labels = boxes = 0
    for image_file in sorted((tmp_path / "images").rglob("*.png")):
        label_file = tmp_path / "labels" / image_file.parent.name / f"{image_file.stem}.txt"
        if not label_file.exists():
            missing_labels += 1
            continue
        lines = label_file.read_text().splitlines()
        empty_labels += not lines
        pixels = np.asarray(Image.open(image_file).convert("RGB"))
        assert pixels.shape == (40, 40, 3)
        for line in lines:
            shape, cx, cy, w, h = (float(v) for v in line.split())
            assert shape in range(len(SHAPE_NAMES))
            assert 0 < w <= 1 and 0 < h <= 1
            assert w / 2 - 1e-6 <= cx <= 1 - w / 2 + 1e-6 and h / 2 - 1e-6 <= cy <= 1 - h / 2 + 1e-6
            # The centre of a rectangle, an ellipse or an upright triangle lies inside it, and
            # shapes are brighter than any background pixel.
            centre = pixels[int(cy * 40), int(cx * 40)]
            assert centre.min() >= SHAPE_MIN, (image_file, line)
            boxes += 1
        if not lines:
            assert pixels.max() <= BACKGROUND_MAX
    assert missing_labels > 0 and empty_labels > 0 and boxes > 0
