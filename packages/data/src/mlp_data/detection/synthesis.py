"""``data.synthetic``: a YOLO dataset written on first use, so an example carries no images.

``examples/shapes`` points ``data.path`` at a folder that does not exist in a fresh checkout;
the first load writes :func:`mlp_data.synthetic.write_shapes_dataset` there (deterministic:
the same spec writes the same bytes), later loads find its ``data.yaml`` and read it. The
dataset is written into a temporary sibling and renamed into place, so a run killed halfway,
or two runs starting together, never leave a half-written dataset behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mlp_data.detection.yolo_format import DATA_YAML


class ShapesSpec(BaseModel):
    """What :func:`mlp_data.synthetic.write_shapes_dataset` writes."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["shapes"] = "shapes"
    n_train: int = Field(default=200, gt=0)
    n_val: int = Field(default=20, gt=0)
    n_test: int = Field(default=20, ge=0)
    image_size: int = Field(default=64, ge=8)
    seed: int = Field(default=0, ge=0)


def ensure_shapes(folder: Path, spec: ShapesSpec) -> Path:
    """``folder/data.yaml``, writing the shapes dataset into ``folder`` first if it is missing."""
    from mlp_data.synthetic import write_shapes_dataset

    data_yaml = folder / DATA_YAML
    if data_yaml.is_file():
        return data_yaml
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        write_shapes_dataset(
            staging,
            n_train=spec.n_train,
            n_val=spec.n_val,
            n_test=spec.n_test,
            image_size=spec.image_size,
            seed=spec.seed,
        )
        try:
            os.rename(staging, folder)
        except OSError:
            # Another process got there first (the folder exists now), or the folder exists
            # without a data.yaml: theirs stands; an empty leftover is replaced.
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
                os.rename(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return data_yaml
