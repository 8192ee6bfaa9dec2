"""The YOLO detection format: ``data.yaml``, image lists and label files, read and checked.

``data.yaml`` (ultralytics' layout)::

    path: .               # dataset root; relative to this file's folder; default: that folder
    train: images/train   # a folder of images, a .txt list of image paths, or a list of these
    val: images/val
    test: images/test     # optional
    names: [cat, dog]     # or {0: cat, 1: dog}

An image ``.../images/<sub>/x.png`` has its labels in ``.../labels/<sub>/x.txt`` (the last
``images`` folder of the path swapped for ``labels``; an image with no ``images`` folder in its
path has its labels beside it). A label file holds one ``class cx cy w h`` line per object,
normalised to the image size. A missing or empty label file means an image without objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mlp_core.errors import DataError
from mlp_data.image.files import is_image_file, list_images

DATA_YAML = "data.yaml"
SPLIT_KEYS = ("train", "val", "test")
REQUIRED_SPLITS = ("train", "val")
LABEL_FIELDS = ("class", "cx", "cy", "w", "h")
DATA_YAML_HINT = (
    "data.yaml needs names (a list, or a mapping from 0..n-1) and train and val entries "
    "(image folders or .txt lists, relative to path)."
)


@dataclass(frozen=True)
class YOLODataYAML:
    file: Path
    root: Path
    names: list[str]
    # Each split's image sources as written (folders or .txt lists), resolved against root.
    sources: dict[str, list[Path]]


def find_data_yaml(path: Path) -> Path:
    """``path`` itself, or the ``data.yaml`` inside the folder ``path``."""
    file = path / DATA_YAML if path.is_dir() else path
    if not file.is_file():
        raise DataError(
            f"{file}: no such file; a YOLO dataset is described by its data.yaml",
            hint="Set data.path to the dataset's data.yaml or to the folder that holds it.",
        )
    return file


def read_data_yaml(path: Path) -> YOLODataYAML:
    file = find_data_yaml(path)
    try:
        document = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DataError(f"{file}: not valid YAML ({exc})", hint=DATA_YAML_HINT) from None
    if not isinstance(document, dict):
        raise DataError(
            f"{file}: expected a mapping of keys, got {document!r}", hint=DATA_YAML_HINT
        )
    root = file.parent / str(document.get("path") or ".")
    names = _class_names(file, document)
    sources = {}
    for split in SPLIT_KEYS:
        entries = document.get(split)
        if not entries:
            if split in REQUIRED_SPLITS:
                raise DataError(f"{file}: {split}: required key is missing", hint=DATA_YAML_HINT)
            continue
        entries = entries if isinstance(entries, list) else [entries]
        sources[split] = [root / str(entry) for entry in entries]
        missing = [str(source) for source in sources[split] if not source.exists()]
        if missing:
            raise DataError(
                f"{file}: {split}: {', '.join(missing)} does not exist "
                f"(entries are relative to path, here {root})",
                hint=DATA_YAML_HINT,
            )
    return YOLODataYAML(file=file, root=root, names=names, sources=sources)


def _class_names(file: Path, document: dict[str, Any]) -> list[str]:
    names = document.get("names")
    if names is None:
        raise DataError(f"{file}: names: required key is missing", hint=DATA_YAML_HINT)
    if isinstance(names, dict):
        ids = sorted(names, key=str)
        if set(names) != set(range(len(names))):
            raise DataError(
                f"{file}: names: the class ids must be 0..{len(names) - 1}, got {ids}",
                hint=DATA_YAML_HINT,
            )
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise DataError(
            f"{file}: names: expected a non-empty list or mapping, got {names!r}",
            hint=DATA_YAML_HINT,
        )
    declared = document.get("nc")
    if declared is not None and declared != len(names):
        raise DataError(f"{file}: nc is {declared} but names lists {len(names)} classes")
    return [str(name) for name in names]


def images_of(source: Path) -> list[Path]:
    """The images a split entry names: every image under a folder, or those a .txt lists."""
    if source.is_dir():
        return list_images(source)
    if source.suffix.lower() == ".txt":
        # ultralytics reads list entries relative to the list's folder.
        lines = source.read_text(encoding="utf-8").splitlines()
        return [source.parent / line.strip() for line in lines if line.strip()]
    if is_image_file(source):
        return [source]
    raise DataError(f"{source}: expected an image folder, a .txt list of images or an image")


def label_path(image: Path) -> Path:
    parts = list(image.parts)
    for position in range(len(parts) - 2, -1, -1):
        if parts[position] == "images":
            parts[position] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def read_labels(file: Path, num_classes: int) -> tuple[np.ndarray, list[str]]:
    """The boxes of one label file as float32 ``[n, 5]`` rows, and its problems.

    Problems name the file and line; a file with problems yields only its good lines.
    """
    if not file.exists():
        return np.zeros((0, len(LABEL_FIELDS)), dtype=np.float32), []
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return np.zeros((0, len(LABEL_FIELDS)), dtype=np.float32), [f"{file}: unreadable ({exc})"]
    rows, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        row, problem = _parse_line(line, num_classes)
        if problem:
            problems.append(f"{file}:{number}: {problem}")
        else:
            rows.append(row)
    boxes = np.asarray(rows, dtype=np.float32).reshape(-1, len(LABEL_FIELDS))
    return boxes, problems


def _parse_line(line: str, num_classes: int) -> tuple[list[float], str | None]:
    fields = line.split()
    if len(fields) != len(LABEL_FIELDS):
        return [], (
            f"expected {len(LABEL_FIELDS)} values '{' '.join(LABEL_FIELDS)}', "
            f"got {len(fields)}: {line.strip()!r}"
        )
    try:
        values = [float(field) for field in fields]
    except ValueError:
        return [], f"expected numbers '{' '.join(LABEL_FIELDS)}', got {line.strip()!r}"
    class_id, *coordinates = values
    if not class_id.is_integer():
        return [], f"class id must be an integer, got {fields[0]!r}"
    if not 0 <= class_id < num_classes:
        return [], f"class id {int(class_id)} out of range: expected 0 <= id < {num_classes}"
    for name, value in zip(LABEL_FIELDS[1:], coordinates):
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            return [], f"{name} = {fields[LABEL_FIELDS.index(name)]} is outside [0, 1]"
    for name, value in zip(LABEL_FIELDS[3:], coordinates[2:]):
        if value <= 0:
            return [], f"{name} = {value} must be greater than 0"
    return values, None
