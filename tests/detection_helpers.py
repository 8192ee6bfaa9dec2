"""A real detection run, trained quickly, for the tests that need one (export, serving, offline).

``train_shapes_run(tmp)`` writes a small shapes dataset and trains ``yolov8n.yaml`` on it for
one epoch through ``mlp_train.run.train`` (ultralytics' engine): a finished run folder with
``weights/best.pt``, ``model``, ``metrics.json`` and the rest. One epoch learns little: use it
for plumbing, not for accuracy.
"""

from __future__ import annotations

from pathlib import Path

import train_helpers
from train_helpers import SHAPES_IMGSZ

IMGSZ = SHAPES_IMGSZ
CLASSES = ["rectangle", "circle", "triangle"]


def shapes_config(
    root: Path, *, n_train: int = 16, n_val: int = 4, n_test: int = 4, epochs: int = 1
) -> Path:
    """A one-file config (data, model, training) for a fresh shapes dataset under ``root``, its
    runs under ``root / "runs"``, no progress lines."""
    return train_helpers.shapes_config(
        root,
        epochs=epochs,
        n_train=n_train,
        n_val=n_val,
        n_test=n_test,
        run_dir=str(root / "runs"),
        progress="none",
    )


def train_shapes_run(root: Path, *, epochs: int = 1, **sizes: int) -> Path:
    """Train the shapes config under ``root`` in this process; the finished run folder."""
    from mlp_train.run import train

    return train(shapes_config(Path(root), epochs=epochs, **sizes)).run_dir
