"""A detection run folder written by hand (the layout `mlp train` writes), around a real YOLOModel.

The export suite runs without mlp-train and mlp-data, so the run is made here: yolov8n's
architecture at a sixteenth of its width (the same layers, 8 to 64 channels: fast) for 3 classes
at imgsz 64, its class branches given a bias so that an untrained network still finds a few dozen
boxes per image (a gate on zero boxes would prove nothing), saved as
ultralytics saves ``weights/best.pt`` (the model in float16) and as the run's ``model`` loaded
from that checkpoint, as ``mlp train`` does. The data is a YOLO dataset of a few seeded images of
coloured shapes with a ``data.yaml``. Imported by name (``from detection_export_helpers import
...``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from detection_serve_helpers import letterbox_spec
from PIL import Image, ImageDraw

from mlp_models import create_model
from mlp_models.ultralytics_env import import_ultralytics

IMGSZ = 64
CLASSES = ["rectangle", "circle", "triangle"]
LETTERBOX_SPEC = letterbox_spec(IMGSZ)


def shapes_image(rng: np.random.Generator, size: tuple[int, int] = (IMGSZ, IMGSZ)) -> Image.Image:
    height, width = size
    image = Image.new("RGB", (width, height), (30, 30, 30))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 4))):
        w, h = int(rng.integers(10, width // 2)), int(rng.integers(10, height // 2))
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        colour = tuple(int(c) for c in rng.integers(60, 256, 3))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.rectangle((x, y, x + w, y + h), fill=colour)
        elif kind == 1:
            draw.ellipse((x, y, x + w, y + h), fill=colour)
        else:
            draw.polygon([(x, y + h), (x + w, y + h), (x + w // 2, y)], fill=colour)
    return image


def write_shapes_data(
    folder: Path, *, test_images: int = 6, test_sizes: list[tuple[int, int]] | None = None
) -> Path:
    """A YOLO dataset folder (data.yaml, images/{train,val,test}); labels are not needed here.
    ``test_sizes`` ([h, w] each) gives the test images other sizes than the model's."""
    rng = np.random.default_rng(0)
    sizes = test_sizes or [(IMGSZ, IMGSZ)] * test_images
    for split, split_sizes in (
        ("train", [(IMGSZ, IMGSZ)] * 2),
        ("val", [(IMGSZ, IMGSZ)] * 2),
        ("test", sizes),
    ):
        images = folder / "images" / split
        images.mkdir(parents=True)
        for index, size in enumerate(split_sizes):
            shapes_image(rng, size).save(images / f"{split}_{index}.png")
    (folder / "data.yaml").write_text(
        "path: .\ntrain: images/train\nval: images/val\ntest: images/test\n"
        f"names: {json.dumps(CLASSES)}\n"
    )
    return folder


def write_detection_run(folder: Path, *, data: Path | None = None, bias: float = -1.0) -> Path:
    """A finished detection run folder; ``data`` is its YOLO dataset (None: a path that does
    not exist). ``bias`` sets the class scores' level (-1: a few dozen boxes per image)."""
    model = detection_model(bias)
    folder.mkdir(parents=True)
    weights = folder / "weights"
    weights.mkdir()
    network = copy.deepcopy(model.network).half()
    torch.save(
        {"model": None, "ema": network, "train_args": {"imgsz": IMGSZ, "task": "detect"}},
        weights / "best.pt",
    )
    model.load_ultralytics_checkpoint(weights / "best.pt")
    model.save(folder / "model")
    data_path = str(data) if data is not None else str(folder / "no-such-data")
    (folder / "config.yaml").write_text(
        f"data:\n  adapter: yolo\n  path: {data_path}\n  imgsz: {IMGSZ}\n"
        "model:\n  name: yolo\n  arch: yolov8n.yaml  # at width 1/16\ntraining:\n  experiment: tests\n"
    )
    (folder / "dataset.json").write_text(json.dumps({"task": "detection", "class_names": CLASSES}))
    (folder / "preprocessing.json").write_text(json.dumps(LETTERBOX_SPEC))
    (folder / "metrics.json").write_text(json.dumps({"test": {"mAP50": 0.0}}))
    return folder


def narrow_arch() -> dict[str, Any]:
    """yolov8n.yaml's document at width 1/16 (ultralytics' scales: depth, width, max channels)."""
    import_ultralytics()
    from ultralytics.nn.tasks import yaml_model_load

    document = copy.deepcopy(yaml_model_load("yolov8n.yaml"))
    document["scales"] = {"n": [0.33, 0.0625, 1024]}
    document["scale"] = "n"
    return document


def detection_model(bias: float = -1.0) -> Any:  # an mlp_models.YOLOModel
    """yolov8n for 3 classes at 64 px whose untrained head finds boxes of varied scores.

    An untrained network's activations vanish (batch norm's running statistics are the
    identity), so every score is sigmoid(bias): the statistics are first measured on a few
    shapes images (cumulative average), then the class branches get ``bias``.
    """
    torch.manual_seed(0)
    model = create_model(
        "yolo", num_classes=len(CLASSES), class_names=CLASSES, arch=narrow_arch(), image_size=64
    )
    network: Any = model.network
    rng = np.random.default_rng(1)
    images = np.stack([np.asarray(shapes_image(rng)) for _ in range(8)])
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    network.train()
    with torch.no_grad():
        network(batch)
    head = network.model[-1]
    for branch in head.cv3:
        torch.nn.init.constant_(branch[-1].bias, bias)
    for branch in head.cv2:
        torch.nn.init.constant_(branch[-1].bias, 0.0)
    return model.eval()
