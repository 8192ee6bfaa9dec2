"""Object detection data in the YOLO format (see :mod:`mlp_data.detection.yolo_format`).

Splits come from ``data.yaml``, never from a random cut. Every image is verified and every label
line checked at load time, before any trainer sees them; problems fail the load (naming
``file:line``) or drop the images they touch, as ``data.on_corrupt`` says.

Images are letterboxed to ``imgsz`` x ``imgsz`` as ultralytics evaluates them (scaled to fit,
padded with grey 114; :class:`mlp_core.image_spec.ImageEvalSpec` with ``resize_mode:
letterbox``, which :meth:`YOLOAdapter.preprocessing` returns for export and serving); the boxes
are moved into the letterboxed image and stay normalised. Pixels are scaled to [0, 1] and not
mean-normalised (the YOLO convention).

``data.synthetic`` writes :func:`mlp_data.synthetic.write_shapes_dataset` to ``data.path``
first when no ``data.yaml`` is there yet (``examples/shapes``: the repository carries no
images).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch.utils.data import Dataset

from mlp_core.batch import BOXES, IMAGE, PATHS
from mlp_core.errors import ConfigError, DataError
from mlp_core.image_spec import CHANNEL_ORDER, ImageEvalSpec
from mlp_data.base import AdapterConfig, DataAdapter, DatasetInfo
from mlp_data.detection.synthesis import ShapesSpec, ensure_shapes
from mlp_data.detection.yolo_format import (
    DATA_YAML,
    YOLODataYAML,
    images_of,
    label_path,
    read_data_yaml,
    read_labels,
)
from mlp_data.image.files import OnCorrupt, find_bad_images, handle_bad_files, open_image
from mlp_data.registry import register_adapter

DetectionSample = tuple[Path, np.ndarray]
PAD_VALUE = 114  # ultralytics' letterbox grey


class YOLOConfig(AdapterConfig):
    adapter: str = "yolo"
    imgsz: int = Field(default=640, gt=0, description="images are letterboxed to imgsz x imgsz")
    on_corrupt: OnCorrupt = "fail"
    synthetic: ShapesSpec | None = Field(
        default=None,
        description="write the synthetic shapes dataset to path first if it has no data.yaml",
    )


def letterbox_spec(imgsz: int) -> ImageEvalSpec:
    """ultralytics' evaluation geometry (LetterBox, auto=False) as the shared image spec."""
    return ImageEvalSpec(
        color_mode="RGB",
        resize_mode="letterbox",
        resize_size=(imgsz, imgsz),
        crop_size=(imgsz, imgsz),
        interpolation="bilinear",
        pad_value=PAD_VALUE,
        scale=1.0 / 255.0,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        channel_order=CHANNEL_ORDER["RGB"],
    )


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
    """``(image path, boxes [n, 5])`` pairs; images decoded and letterboxed on access, boxes
    moved with them (still normalised, now to the letterboxed image)."""

    def __init__(self, samples: list[DetectionSample], spec: ImageEvalSpec) -> None:
        self.samples = samples
        self.spec = spec

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, boxes = self.samples[index]
        image = open_image(path)
        return {
            IMAGE: torch.from_numpy(self.spec.apply(image)),
            BOXES: torch.from_numpy(letterboxed_boxes(boxes, image.height, image.width, self.spec)),
            PATHS: str(path),
        }


def letterboxed_boxes(
    boxes: np.ndarray, height: int, width: int, spec: ImageEvalSpec
) -> np.ndarray:
    """``[n, 5]`` rows (class, cx, cy, w, h) normalised to a ``height`` x ``width`` image ->
    normalised to that image letterboxed by ``spec``."""
    box = spec.letterbox(height, width)
    out_h, out_w = spec.crop_size
    moved = boxes.astype(np.float32).copy()
    moved[:, 1] = (boxes[:, 1] * box.width + box.left) / out_w
    moved[:, 3] = boxes[:, 3] * box.width / out_w
    moved[:, 2] = (boxes[:, 2] * box.height + box.top) / out_h
    moved[:, 4] = boxes[:, 4] * box.height / out_h
    return moved


@register_adapter("yolo")
class YOLOAdapter(DataAdapter):
    config_class = YOLOConfig
    config: YOLOConfig
    collate_fn = staticmethod(detection_collate)

    def __init__(self, config: YOLOConfig) -> None:
        super().__init__(config)
        self.spec = letterbox_spec(config.imgsz)
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
        if self.config.synthetic is not None:
            folder = self.config.path
            folder = folder.parent if folder.name == DATA_YAML else folder
            ensure_shapes(folder, self.config.synthetic)
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
        return DetectionDataset(self.splits[split], self.spec)

    def info(self) -> DatasetInfo:
        self.prepare()
        return DatasetInfo(
            task="detection",
            num_classes=len(self.class_names),
            class_names=self.class_names,
            sizes={split: len(samples) for split, samples in self.splits.items()},
        )

    def preprocessing(self) -> dict[str, Any]:
        """The letterbox :class:`~mlp_core.image_spec.ImageEvalSpec` (what export and serving
        apply to an image before the network)."""
        return self.spec.to_dict()

    def split_images(self, split: str) -> list[Path]:
        """The checked images of one split (what a trainer may read), in data.yaml order."""
        self.prepare()
        return [path for path, _ in self.splits[split]]
