"""Image classification data from a class-per-folder tree or a CSV manifest.

Two layouts, chosen by what ``data.path`` is:

- a folder: ``root/<class name>/**/<image>``, one sub-folder per class (torchvision's
  ``ImageFolder`` layout); class names are the sorted folder names;
- a ``.csv`` file: a manifest with the columns ``path`` and ``label``, paths relative to the
  manifest's folder (or absolute); class names are the sorted distinct labels.

Every image is opened and verified at load time; bad ones fail the load or are skipped with a
warning, as ``data.on_corrupt`` says. Splits are stratified and seeded (:mod:`mlp_data.splits`).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from mlp_core.batch import IMAGE, PATHS, TARGET
from mlp_core.errors import ConfigError, DataError
from mlp_data.base import AdapterConfig, DataAdapter, DatasetInfo
from mlp_data.image.files import (
    IMAGE_EXTENSIONS,
    OnCorrupt,
    find_bad_images,
    format_problems,
    handle_bad_files,
    list_images,
    open_image,
)
from mlp_data.image.transforms import ImagePreprocessor, ImageTransformConfig
from mlp_data.registry import register_adapter
from mlp_data.splits import split_indices

MANIFEST_COLUMNS = ("path", "label")

Sample = tuple[Path, int]


class ImageFolderConfig(AdapterConfig, ImageTransformConfig):
    adapter: str = "image_folder"
    on_corrupt: OnCorrupt = "fail"


class ImageClassificationDataset(Dataset):
    """``(path, class index)`` pairs decoded with Pillow and transformed on access."""

    def __init__(self, samples: list[Sample], transform: Callable[[Any], torch.Tensor]) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, target = self.samples[index]
        return {
            IMAGE: self.transform(open_image(path)),
            TARGET: torch.tensor(target, dtype=torch.int64),
            PATHS: str(path),
        }


@register_adapter("image_folder")
class ImageFolderAdapter(DataAdapter):
    config_class = ImageFolderConfig
    config: ImageFolderConfig

    def __init__(self, config: ImageFolderConfig) -> None:
        super().__init__(config)
        self.preprocessor = ImagePreprocessor.from_config(config)
        self.class_names: list[str] = []
        self.samples: list[Sample] = []
        self.splits: dict[str, list[Sample]] = {}

    def load(self) -> None:
        source = self.config.path
        if source is None:
            raise ConfigError(
                "data.path: required by the image_folder adapter",
                hint="Set data.path to a class-per-folder tree or a CSV manifest (path,label).",
            )
        if not source.exists():
            raise DataError(f"{source}: no such folder or manifest")
        if source.is_dir():
            self.class_names, self.samples = _index_folder(source)
        else:
            self.class_names, self.samples = _index_manifest(source)

    def validate(self) -> None:
        bad = find_bad_images(path for path, _ in self.samples)
        handle_bad_files(
            [f"{path}: {reason}" for path, reason in bad.items()],
            self.config.on_corrupt,
            "unreadable images",
        )
        self.samples = [sample for sample in self.samples if sample[0] not in bad]
        if not self.samples:
            raise DataError(f"{self.config.path}: no readable images left")

    def split(self) -> None:
        targets = [target for _, target in self.samples]
        positions = split_indices(len(self.samples), self.config.split, labels=targets)
        self.splits = {
            name: [self.samples[i] for i in indices] for name, indices in positions.items()
        }

    def dataset(self, split: str) -> ImageClassificationDataset:
        self.prepare()
        return ImageClassificationDataset(self.splits[split], self.preprocessor.transform(split))

    def info(self) -> DatasetInfo:
        self.prepare()
        return DatasetInfo(
            task="classification",
            num_classes=len(self.class_names),
            class_names=list(self.class_names),
            model_inputs={
                "in_channels": self.preprocessor.channels,
                "image_size": list(self.preprocessor.crop_size),
            },
            sizes={name: len(samples) for name, samples in self.splits.items()},
        )

    def preprocessing(self) -> dict[str, Any]:
        return self.preprocessor.eval_spec().to_dict()


def _index_folder(root: Path) -> tuple[list[str], list[Sample]]:
    # Hidden folders (.git, .ipynb_checkpoints) are never classes.
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(
            f"{root}: no class folders; expected {root}/<class name>/<image>",
            hint="Put the images of each class in a sub-folder named after the class.",
        )
    samples: list[Sample] = []
    empty = []
    for target, class_dir in enumerate(class_dirs):
        images = list_images(class_dir)
        if not images:
            empty.append(str(class_dir))
        samples += [(path, target) for path in images]
    if empty:
        raise DataError(
            f"{len(empty)} class folder(s) hold no image "
            f"({', '.join(IMAGE_EXTENSIONS)}):\n{format_problems(empty)}",
            hint="Add images to these folders or remove them; every folder is a class.",
        )
    return [d.name for d in class_dirs], samples


def _index_manifest(manifest: Path) -> tuple[list[str], list[Sample]]:
    if manifest.suffix.lower() != ".csv":
        raise DataError(
            f"{manifest}: expected a folder of class folders or a .csv manifest",
            hint="A manifest is a CSV file with the columns path,label.",
        )
    with manifest.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(
                f"{manifest}: missing column(s) {', '.join(missing)}; "
                f"expected a header with {','.join(MANIFEST_COLUMNS)}, got {reader.fieldnames}"
            )
        rows, problems = [], []
        for row in reader:
            path, label = ((row.get(c) or "").strip() for c in MANIFEST_COLUMNS)
            if not path or not label:
                problems.append(f"{manifest}:{reader.line_num}: empty path or label")
                continue
            rows.append((manifest.parent / path, label))
    if problems:
        raise DataError(f"{len(problems)} bad manifest row(s):\n{format_problems(problems)}")
    if not rows:
        raise DataError(f"{manifest}: the manifest lists no images")
    class_names = sorted({label for _, label in rows})
    index = {name: i for i, name in enumerate(class_names)}
    return class_names, [(path, index[label]) for path, label in rows]
