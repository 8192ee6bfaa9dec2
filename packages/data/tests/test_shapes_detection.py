"""The detection data of the shapes example: letterboxed samples and spec, the generator's
test split and non-overlapping shapes, and the dataset written on first use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from mlp_core.batch import BOXES, IMAGE
from mlp_core.image_spec import ImageEvalSpec
from mlp_data.detection.adapter import YOLOAdapter
from mlp_data.detection.synthesis import ShapesSpec, ensure_shapes
from mlp_data.registry import create_adapter
from mlp_data.synthetic import SHAPE_NAMES, write_shapes_dataset


def boxes_of(label_file: Path) -> np.ndarray:
    rows = [[float(v) for v in line.split()] for line in label_file.read_text().splitlines()]
    return np.asarray(rows, dtype=np.float64).reshape(-1, 5)


def test_preprocessing_is_ultralytics_letterbox_and_samples_follow_it(tmp_path: Path) -> None:
    # A wide 30x60 image with one box: letterboxed to 64x64 it is scaled by 64/60 and padded
    # above and below, so the normalised box moves.
    images, labels = tmp_path / "images" / "train", tmp_path / "labels" / "train"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    pixels = np.full((30, 60, 3), 20, np.uint8)
    pixels[5:15, 10:40] = 200  # the object: x 10..40, y 5..15
    Image.fromarray(pixels).save(images / "wide.png")
    (labels / "wide.txt").write_text("1 0.416667 0.333333 0.5 0.333333\n")
    data = tmp_path / "data.yaml"
    data.write_text(
        yaml.safe_dump({"train": "images/train", "val": "images/train", "names": ["a", "b"]})
    )

    adapter = create_adapter({"adapter": "yolo", "path": str(data), "imgsz": 64})
    assert isinstance(adapter, YOLOAdapter)
    spec = ImageEvalSpec.parse(adapter.preprocessing())
    assert (spec.resize_mode, spec.crop_size, spec.pad_value) == ("letterbox", (64, 64), 114)
    assert (spec.mean, spec.std, spec.color_mode) == ((0.0,) * 3, (1.0,) * 3, "RGB")

    sample = adapter.dataset("train")[0]
    np.testing.assert_array_equal(
        sample[IMAGE].numpy(), spec.apply(Image.open(images / "wide.png"))
    )
    box = spec.letterbox(30, 60)  # 32 rows of image, 16 rows of grey above
    assert (box.top, box.height) == (16, 32)
    cls, cx, cy, w, h = sample[BOXES].numpy()[0]
    ratio = 64 / 60
    assert cls == 1
    np.testing.assert_allclose([cx * 64, w * 64], [25 * ratio, 30 * ratio], atol=1e-3)
    np.testing.assert_allclose([cy * 64, h * 64], [10 * ratio + 16, 10 * ratio], atol=1e-3)
    # The object's pixels are where the moved box says.
    image = sample[IMAGE].numpy()
    top, left = round((cy - h / 2) * 64) + 1, round((cx - w / 2) * 64) + 1
    assert image[:, top, left].min() > 0.7
    assert image[:, 2, 2].tolist() == pytest.approx([114 / 255] * 3)


def test_shapes_have_a_test_split_and_never_overlap(tmp_path: Path) -> None:
    data = write_shapes_dataset(tmp_path, n_train=20, n_val=4, n_test=6, image_size=64, seed=1)
    document = yaml.safe_load(data.read_text())
    assert document["test"] == "images/test"
    assert SHAPE_NAMES == ("rectangle", "circle", "triangle")
    assert len(list((tmp_path / "images" / "test").glob("*.png"))) == 6
    pairs = 0
    for label_file in (tmp_path / "labels").rglob("*.txt"):
        boxes = boxes_of(label_file)
        for cls, _, _, w, h in boxes:
            if SHAPE_NAMES[int(cls)] == "circle":
                assert w == pytest.approx(h)
        corners = np.stack(
            [
                boxes[:, 1] - boxes[:, 3] / 2,
                boxes[:, 2] - boxes[:, 4] / 2,
                boxes[:, 1] + boxes[:, 3] / 2,
                boxes[:, 2] + boxes[:, 4] / 2,
            ],
            axis=1,
        )
        for i in range(len(corners)):
            for j in range(i + 1, len(corners)):
                a, b = corners[i], corners[j]
                overlap_w = min(a[2], b[2]) - max(a[0], b[0])
                overlap_h = min(a[3], b[3]) - max(a[1], b[1])
                assert overlap_w <= 1e-6 or overlap_h <= 1e-6, label_file
                pairs += 1
    assert pairs > 0
    # Without a test split, data.yaml has no test entry (as before).
    plain = write_shapes_dataset(tmp_path / "plain", n_train=2, n_val=1, image_size=32)
    assert "test" not in yaml.safe_load(plain.read_text())


def test_synthetic_data_is_written_once_on_first_use(tmp_path: Path) -> None:
    folder = tmp_path / "examples" / "data"
    spec = ShapesSpec(n_train=6, n_val=2, n_test=2, image_size=32, seed=3)
    section = {"adapter": "yolo", "path": str(folder), "imgsz": 32, "synthetic": spec.model_dump()}

    adapter = create_adapter(section)
    assert adapter.info().sizes == {"train": 6, "val": 2, "test": 2}
    first = {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    # No temporary folder is left beside it.
    assert sorted(p.name for p in folder.parent.iterdir()) == ["data"]

    marker = folder / "images" / "train" / "kept.txt"
    marker.write_text("the existing dataset is not rewritten")
    assert ensure_shapes(folder, spec) == folder / "data.yaml"
    assert marker.exists()
    again = tmp_path / "again"
    ensure_shapes(again, spec)
    assert {p.relative_to(again): p.read_bytes() for p in again.rglob("*") if p.is_file()} == {
        p.relative_to(folder): b for p, b in first.items()
    }
