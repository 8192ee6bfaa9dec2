"""YOLOAdapter on a real YOLO dataset drawn by the shapes generator, and on broken copies of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mlp_core.batch import BOXES, IMAGE, PATHS
from mlp_core.errors import DataError
from mlp_data.detection.adapter import YOLOAdapter, detection_collate
from mlp_data.detection.yolo_format import label_path
from mlp_data.image.files import SkippedFilesWarning
from mlp_data.registry import create_adapter
from mlp_data.synthetic import SHAPE_NAMES, write_shapes_dataset

SIZE = 32


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    return write_shapes_dataset(root, n_train=12, n_val=6, image_size=SIZE, seed=3)


@pytest.fixture
def small_shapes(tmp_path: Path) -> Path:
    """A fresh dataset per test, for tests that break it."""
    return write_shapes_dataset(tmp_path / "shapes", n_train=4, n_val=2, image_size=16, seed=1)


def adapter_for(path: Path, **options) -> YOLOAdapter:
    section = {"adapter": "yolo", "path": str(path), "imgsz": SIZE, **options}
    adapter = create_adapter(section)
    assert isinstance(adapter, YOLOAdapter)
    return adapter


def labels_on_disk(image: Path) -> np.ndarray:
    """The label file read plainly, independent of the adapter's parser."""
    file = image.parent.parent.parent / "labels" / image.parent.name / f"{image.stem}.txt"
    if not file.exists():
        return np.zeros((0, 5), dtype=np.float32)
    rows = [[float(v) for v in line.split()] for line in file.read_text().splitlines() if line]
    return np.asarray(rows, dtype=np.float32).reshape(-1, 5)


def test_shapes_dataset_through_loaders_with_the_detection_collate(shapes: Path) -> None:
    adapter = adapter_for(shapes, batch_size=5, shuffle=False)
    loaders = adapter.loaders()

    info = adapter.info()
    assert info.task == "detection"
    assert info.num_classes == 3
    assert info.class_names == list(SHAPE_NAMES)
    assert info.sizes == {"train": 12, "val": 6, "test": 0}
    assert len(loaders["test"].dataset) == 0

    boxes_seen = 0
    for split in ("train", "val"):
        for batch in loaders[split]:
            assert set(batch) == {IMAGE, BOXES, PATHS}
            count = len(batch[PATHS])
            assert batch[IMAGE].shape == (count, 3, SIZE, SIZE)
            assert batch[IMAGE].dtype == torch.float32
            assert batch[IMAGE].min() >= 0.0 and batch[IMAGE].max() <= 1.0
            assert batch[BOXES].dtype == torch.float32
            expected = [
                np.hstack([np.full((len(rows), 1), i), rows])
                for i, path in enumerate(batch[PATHS])
                for rows in [labels_on_disk(Path(path))]
            ]
            np.testing.assert_allclose(batch[BOXES].numpy(), np.vstack(expected), atol=1e-7)
            boxes_seen += len(batch[BOXES])
    assert boxes_seen > 0


def test_resizing_keeps_the_normalised_boxes(shapes: Path) -> None:
    adapter = adapter_for(shapes, imgsz=48).prepare()
    sample = adapter.dataset("train")[0]
    assert sample[IMAGE].shape == (3, 48, 48)
    np.testing.assert_array_equal(sample[BOXES].numpy(), labels_on_disk(Path(sample[PATHS])))
    spec = adapter.preprocessing()
    assert (spec["resize_size"], spec["crop_size"]) == ([48, 48], [48, 48])
    assert (spec["mean"], spec["std"]) == ([0.0] * 3, [1.0] * 3)


def test_collate_of_images_without_objects() -> None:
    samples = [
        {IMAGE: torch.zeros(3, 4, 4), BOXES: torch.zeros((0, 5)), PATHS: "a.png"},
        {IMAGE: torch.ones(3, 4, 4), BOXES: torch.tensor([[2, 0.5, 0.5, 0.2, 0.2]]), PATHS: "b"},
    ]
    batch = detection_collate(samples)
    assert batch[IMAGE].shape == (2, 3, 4, 4)
    assert torch.equal(batch[BOXES], torch.tensor([[1.0, 2, 0.5, 0.5, 0.2, 0.2]]))
    assert detection_collate(samples[:1])[BOXES].shape == (0, 6)


def test_names_as_a_list_and_a_test_split_from_a_txt_list(small_shapes: Path) -> None:
    root = small_shapes.parent
    document = yaml.safe_load(small_shapes.read_text())
    listed = sorted((root / "images" / "val").glob("*.png"))[:1]
    (root / "test.txt").write_text("".join(f"images/val/{p.name}\n" for p in listed))
    document |= {"names": list(SHAPE_NAMES), "test": "test.txt"}
    small_shapes.write_text(yaml.safe_dump(document))

    info = adapter_for(root).info()  # the folder that holds data.yaml works too
    assert info.class_names == list(SHAPE_NAMES)
    assert info.sizes == {"train": 4, "val": 2, "test": 1}


def test_label_paths_follow_the_images_to_labels_convention() -> None:
    image = Path("/data/images/set/images/train/a.b.png")
    assert label_path(image) == Path("/data/images/set/labels/train/a.b.txt")
    assert label_path(Path("/flat/x.jpg")) == Path("/flat/x.txt")


def first_label_file(data_yaml: Path) -> Path:
    files = sorted((data_yaml.parent / "labels" / "train").glob("*.txt"))
    return next(f for f in files if f.read_text().strip())


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ("3 0.5 0.5 0.2 0.2", r"class id 3 out of range: expected 0 <= id < 3"),
        ("-1 0.5 0.5 0.2 0.2", r"class id -1 out of range"),
        ("1 1.2 0.5 0.2 0.2", r"cx = 1.2 is outside \[0, 1\]"),
        ("1 0.5 0.5 0.2 -0.1", r"h = -0.1 is outside \[0, 1\]"),
        ("1 0.5 0.5 0.0 0.2", r"w = 0.0 must be greater than 0"),
        ("1 0.5 0.5 0.2", r"expected 5 values 'class cx cy w h', got 4"),
        ("one 0.5 0.5 0.2 0.2", r"expected numbers 'class cx cy w h'"),
        ("1.5 0.5 0.5 0.2 0.2", r"class id must be an integer"),
    ],
)
def test_bad_label_lines_name_file_and_line(
    small_shapes: Path, bad_line: str, expected: str
) -> None:
    file = first_label_file(small_shapes)
    lines = file.read_text().splitlines()
    file.write_text("\n".join([lines[0], bad_line, *lines[1:]]) + "\n")

    with pytest.raises(DataError, match=expected) as caught:
        adapter_for(small_shapes).prepare()
    assert f"{file}:2:" in str(caught.value)


def test_skip_mode_drops_images_with_bad_labels_or_pixels(small_shapes: Path) -> None:
    file = first_label_file(small_shapes)
    file.write_text("7 0.5 0.5 0.2 0.2\n")
    corrupt = sorted((small_shapes.parent / "images" / "val").glob("*.png"))[0]
    corrupt.write_bytes(b"garbage")

    with pytest.warns(SkippedFilesWarning) as warned:
        adapter = adapter_for(small_shapes, on_corrupt="skip").prepare()
    message = str(warned[0].message)
    assert f"{file}:1:" in message and str(corrupt) in message
    assert adapter.info().sizes == {"train": 3, "val": 1, "test": 0}
    kept = {str(path) for samples in adapter.splits.values() for path, _ in samples}
    assert str(corrupt) not in kept
    assert str(file.parent.parent.parent / "images" / "train" / f"{file.stem}.png") not in kept


def test_missing_data_yaml(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.yaml: no such file"):
        adapter_for(tmp_path).prepare()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"names": None}, r"names: required key is missing"),
        ({"names": {0: "a", 2: "b"}}, r"names: the class ids must be 0..1"),
        ({"names": []}, r"names: expected a non-empty list or mapping"),
        ({"val": None}, r"val: required key is missing"),
        ({"train": "images/elsewhere"}, r"train: .*images/elsewhere does not exist"),
    ],
)
def test_bad_data_yaml_names_the_file_and_key(
    small_shapes: Path, change: dict, expected: str
) -> None:
    document = yaml.safe_load(small_shapes.read_text())
    document.update(change)
    small_shapes.write_text(yaml.safe_dump({k: v for k, v in document.items() if v is not None}))
    with pytest.raises(DataError, match=expected) as caught:
        adapter_for(small_shapes).prepare()
    assert str(small_shapes) in str(caught.value)
