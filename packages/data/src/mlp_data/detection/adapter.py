"""Object detection data in the YOLO format (see :mod:`mlp_data.detection.yolo_format`).

Splits come from ``data.yaml``, never from a random cut. Every image is verified and every label
line checked at load time; problems fail the load or drop the images they touch, as
``data.on_corrupt`` says. Images are resized to ``imgsz`` x ``imgsz`` without letterboxing, so
the normalised boxes of the label files stay valid unchanged; pixels are scaled to [0, 1] and not
mean-normalised (the YOLO convention).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch.utils.data import Dataset

from mlp_core.batch import BOXES, IMAGE, PATHS
from mlp_core.errors import ConfigError, DataError
from mlp_data.base import AdapterConfig, DataAdapter, DatasetInfo
from mlp_data.detection.yolo_format import (
    YOLODataYAML,
    images_of,
    label_path,
    read_data_yaml,
    read_labels,
)
from mlp_data.image.files import OnCorrupt, find_bad_images, handle_bad_files, open_image
from mlp_data.image.transforms import AugmentConfig, ImagePreprocessor, ImageTransformConfig
from mlp_data.registry import register_adapter

DetectionSample = tuple[Path, np.ndarray]


class YOLOConfig(AdapterConfig):
    adapter: str = "yolo"
    imgsz: int = Field(default=640, gt=0, description="images are resized to imgsz x imgsz")
    on_corrupt: OnCorrupt = "fail"


def detection_collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack images; concatenate boxes into ``[N, 6]`` rows (image index, class, cx, cy, w, h).

    The image index first is ultralytics' convention: it tells which image of the batch a box
    belongs to, since images hold different numbers of boxes.
    """
    rows = [
        torch.cat([torch.full((len(s[BOXES]), 1), float(i)), s[BOXES]], dim=1)
        for i, s in enumerate(samples)
    ]
    return {
        IMAGE: torch.stack([s[IMAGE] for s in samples]),
        BOXES: torch.cat(rows) if rows else torch.zeros((0, 6)),
        PATHS: [s[PATHS] for s in samples],
    }


class DetectionDataset(Dataset):
    """``(image path, boxes [n, 5])`` pairs; images decoded and resized on access."""

    def __init__(
        self, samples: list[DetectionSample], transform: Callable[[Any], torch.Tensor]
    ) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, boxes = self.samples[index]
        return {
            IMAGE: self.transform(open_image(path)),
            BOXES: torch.from_numpy(boxes),
            PATHS: str(path),
        }


@register_adapter("yolo")
class YOLOAdapter(DataAdapter):
    config_class = YOLOConfig
    config: YOLOConfig
    collate_fn = staticmethod(detection_collate)

    def __init__(self, config: YOLOConfig) -> None:
        super().__init__(config)
        size = (config.imgsz, config.imgsz)
        # A plain resize to a square: resize and crop sizes equal, so the crop is a no-op.
        self.preprocessor = ImagePreprocessor(
            ImageTransformConfig(
                image_size=size,
                resize=size,
                mean=(0.0, 0.0, 0.0),
                std=(1.0, 1.0, 1.0),
                augment=AugmentConfig(enabled=False),
            )
        )
        self.data_yaml: YOLODataYAML | None = None
        self.images: dict[str, list[Path]] = {}
        self.splits: dict[str, list[DetectionSample]] = {}

    @property
    def class_names(self) -> list[str]:
        return list(self.data_yaml.names) if self.data_yaml else []

    def load(self) -> None:
        if self.config.path is None:
            raise ConfigError(
                "data.path: required by the yolo adapter",
                hint="Set data.path to the dataset's data.yaml or the folder that holds it.",
            )
        self.data_yaml = read_data_yaml(self.config.path)
        self.images = {
            split: [image for source in sources for image in images_of(source)]
            for split, sources in self.data_yaml.sources.items()
        }
        empty = [split for split in ("train", "val") if not self.images[split]]
        if empty:
            raise DataError(
                f"{self.data_yaml.file}: no images in {' or '.join(empty)}",
                hint="Point train and val at folders of images (or .txt lists of image paths).",
            )

    def validate(self) -> None:
        num_classes = len(self.class_names)
        problems: list[str] = []
        for split, images in self.images.items():
            bad_images = find_bad_images(images)
            problems += [f"{path}: {reason}" for path, reason in bad_images.items()]
            samples = []
            for image in images:
                boxes, label_problems = read_labels(label_path(image), num_classes)
                problems += label_problems
                if image not in bad_images and not label_problems:
                    samples.append((image, boxes))
            self.splits[split] = samples
        handle_bad_files(problems, self.config.on_corrupt, "problems in images or label files")

    def split(self) -> None:
        # The splits are data.yaml's; a missing test split is an empty one.
        self.splits.setdefault("test", [])

    def dataset(self, split: str) -> DetectionDataset:
        self.prepare()
        return DetectionDataset(self.splits[split], self.preprocessor.eval_transform)

    def info(self) -> DatasetInfo:
        self.prepare()
        return DatasetInfo(
            task="detection",
            num_classes=len(self.class_names),
            class_names=self.class_names,
            sizes={split: len(samples) for split, samples in self.splits.items()},
        )

    def preprocessing(self) -> dict[str, Any]:
        return self.preprocessor.eval_spec().to_dict()
