"""ImageFolderAdapter on real PNGs: scikit-learn's digits written as a class-per-folder tree."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest
import torch

from mlp_core.batch import IMAGE, PATHS, TARGET
from mlp_core.errors import ConfigError, DataError
from mlp_data.image.adapter import ImageFolderAdapter
from mlp_data.image.files import SkippedFilesWarning
from mlp_data.registry import create_adapter
from mlp_data.synthetic import write_digits_folder

NUM_IMAGES = 300
SIZE = 12


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits_folder(tmp_path_factory.mktemp("digits"), image_size=SIZE, limit=NUM_IMAGES)


def adapter_for(path: Path, **options) -> ImageFolderAdapter:
    section = {"adapter": "image_folder", "path": str(path), "image_size": SIZE, **options}
    adapter = create_adapter(section)
    assert isinstance(adapter, ImageFolderAdapter)
    return adapter


def copy_tree(source: Path, target: Path) -> Path:
    for file in source.rglob("*.png"):
        destination = target / file.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(file.read_bytes())
    return target


@pytest.mark.parametrize(("color_mode", "channels"), [("L", 1), ("RGB", 3)])
def test_digit_folders_become_typed_batches(digits: Path, color_mode: str, channels: int) -> None:
    adapter = adapter_for(digits, color_mode=color_mode, batch_size=16)
    loaders = adapter.loaders()

    batch = next(iter(loaders["train"]))
    assert set(batch) == {IMAGE, TARGET, PATHS}
    assert batch[IMAGE].dtype == torch.float32
    assert batch[IMAGE].shape == (16, channels, SIZE, SIZE)
    assert type(batch[IMAGE]) is torch.Tensor
    assert batch[TARGET].dtype == torch.int64
    assert batch[TARGET].shape == (16,)
    assert all(Path(p).parent.name == str(int(t)) for p, t in zip(batch[PATHS], batch[TARGET]))

    info = adapter.info()
    assert info.task == "classification"
    assert info.num_classes == 10
    assert info.class_names == [str(d) for d in range(10)]
    assert info.model_inputs == {"in_channels": channels, "image_size": [SIZE, SIZE]}
    assert info.model_kwargs()["num_classes"] == 10
    # sklearn cuts ceil(0.15 * 300) = 45 for test, then 45 of the remaining 255 for val.
    assert info.sizes == {"train": 210, "val": 45, "test": 45}
    assert sum(len(loader.dataset) for loader in loaders.values()) == NUM_IMAGES


def test_splits_are_stratified_disjoint_and_seeded(digits: Path) -> None:
    first, second = adapter_for(digits).prepare(), adapter_for(digits).prepare()
    other_seed = adapter_for(digits, split={"seed": 7}).prepare()

    overall = Counter(target for _, target in first.samples)
    for name, share in (("val", 0.15), ("test", 0.15), ("train", 0.7)):
        counts = Counter(target for _, target in first.splits[name])
        for target, total in overall.items():
            assert abs(counts[target] - share * total) <= 1.5, (name, target)

    paths = {name: {p for p, _ in samples} for name, samples in first.splits.items()}
    assert not (paths["train"] & paths["val"] or paths["train"] & paths["test"])
    assert len(set.union(*paths.values())) == NUM_IMAGES
    assert first.splits == second.splits
    assert other_seed.splits["val"] != first.splits["val"]


def test_manifest_csv_with_relative_paths(digits: Path, tmp_path: Path) -> None:
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    images = sorted(digits.rglob("*.png"))[::3]
    flat = tmp_path / "pictures"
    flat.mkdir()
    manifest = tmp_path / "manifest.csv"
    expected = {}
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for image in images:
            (flat / image.name).write_bytes(image.read_bytes())
            label = words[int(image.parent.name)]
            writer.writerow([f"pictures/{image.name}", label])
            expected[str(flat / image.name)] = label

    adapter = adapter_for(manifest, split={"val": 0.2, "test": 0.0})
    info = adapter.info()
    assert info.class_names == sorted(set(expected.values()))
    assert info.sizes == {"train": 80, "val": 20, "test": 0}

    seen = {}
    for loader in adapter.loaders(("train", "val")).values():
        for batch in loader:
            for path, target in zip(batch[PATHS], batch[TARGET].tolist()):
                seen[path] = info.class_names[target]
    assert seen == expected


def test_manifest_without_label_column_names_it(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,class\na.png,cat\n")
    with pytest.raises(DataError, match=r"manifest\.csv: missing column\(s\) label"):
        adapter_for(manifest).prepare()


def test_corrupt_images_fail_listing_every_bad_path(digits: Path, tmp_path: Path) -> None:
    root = copy_tree(digits, tmp_path / "digits")
    garbage = root / "3" / "garbage.png"
    garbage.write_bytes(b"this is not a png at all" * 10)
    good = next((root / "5").glob("*.png")).read_bytes()
    truncated = root / "5" / "truncated.png"
    truncated.write_bytes(good[: len(good) // 2])

    with pytest.raises(DataError) as caught:
        adapter_for(root).prepare()

    message = str(caught.value)
    assert "2 unreadable images" in message
    assert str(garbage) in message
    assert str(truncated) in message
    assert "on_corrupt: skip" in caught.value.hint


def test_corrupt_images_skipped_with_a_warning(digits: Path, tmp_path: Path) -> None:
    root = copy_tree(digits, tmp_path / "digits")
    garbage = root / "7" / "garbage.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)

    with pytest.warns(SkippedFilesWarning, match="garbage.png"):
        adapter = adapter_for(root, on_corrupt="skip").prepare()

    kept = [path for samples in adapter.splits.values() for path, _ in samples]
    assert len(kept) == NUM_IMAGES
    assert garbage not in kept
    batch = next(iter(adapter.loaders(("val",))["val"]))
    assert batch[IMAGE].shape[1:] == (3, SIZE, SIZE)


def test_folder_without_class_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no class folders"):
        adapter_for(tmp_path).prepare()


def test_class_folder_without_images_is_named(digits: Path, tmp_path: Path) -> None:
    root = copy_tree(digits, tmp_path / "digits")
    (root / "ten").mkdir()
    (root / "ten" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"1 class folder\(s\) hold no image") as caught:
        adapter_for(root).prepare()
    assert str(root / "ten") in str(caught.value)


def test_missing_path_and_bad_options_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.path: required"):
        create_adapter({"adapter": "image_folder"}).prepare()
    with pytest.raises(DataError, match="no such folder"):
        adapter_for(tmp_path / "nowhere").prepare()
    with pytest.raises(ConfigError, match=r"mean needs 1 value\(s\) for color_mode L"):
        adapter_for(tmp_path, color_mode="L", mean=[0.5, 0.5, 0.5])
    with pytest.raises(ConfigError, match="data.on_corrupt"):
        adapter_for(tmp_path, on_corrupt="ignore")
