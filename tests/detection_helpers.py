"""A real detection run, trained quickly, for the tests that need one (export, serving, offline).

``train_shapes_run(tmp)`` writes a small shapes dataset and trains ``yolov8n.yaml`` on it for
one epoch through ``mlp_train.run.train`` (ultralytics' engine): a finished run folder with
``weights/best.pt``, ``model``, ``metrics.json`` and the rest. One epoch learns little: use it
for plumbing, not for accuracy.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from mlp_data.synthetic import write_shapes_dataset

IMGSZ = 64
CLASSES = ["rectangle", "circle", "triangle"]


def shapes_config(
    root: Path, *, n_train: int = 16, n_val: int = 4, n_test: int = 4, epochs: int = 1
) -> Path:
    """A one-file config (data, model, training) for a fresh shapes dataset under ``root``."""
    data = write_shapes_dataset(
        root / "shapes", n_train=n_train, n_val=n_val, n_test=n_test, image_size=IMGSZ, seed=0
    )
    config = {
        "data": {"adapter": "yolo", "path": str(data), "imgsz": IMGSZ, "batch_size": 8},
        "model": {"name": "yolo", "arch": "yolov8n.yaml"},
        "training": {
            "epochs": epochs,
            "seed": 0,
            "device": "cpu",
            "run_dir": str(root / "runs"),
            "run_name": "shapes",
            "progress": "none",
            "tracking": {"backend": "local"},
            "optimizer": {"name": "adamw", "lr": 0.003},
            "yolo": {"warmup_epochs": 0, "mosaic": 0.0},
        },
    }
    path = root / "shapes.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def train_shapes_run(root: Path, *, epochs: int = 1, **sizes: int) -> Path:
    """Train the shapes config under ``root`` in this process; the finished run folder."""
    from mlp_train.run import train

    return train(shapes_config(Path(root), epochs=epochs, **sizes)).run_dir
