"""User callbacks the tests name by import path in configs, and shared helpers.

The callbacks are real ``mlp_train`` callbacks loaded the way a user's would be
(``training.callbacks: [{class: train_helpers.Recorder, args: {...}}]``); subprocesses find this
module through ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import signal as signals
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import torch
import yaml

from mlp_data.synthetic import write_shapes_dataset
from mlp_train.callbacks import Callback

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parents[2]
EXAMPLE = REPO_ROOT / "examples" / "penguins"
PENGUINS_CSV = REPO_ROOT / "examples" / "data" / "penguins.csv"

# In-process runs: CPU, no MLflow (the tracking tests use it), no progress lines.
QUIET = [
    f"data.path={PENGUINS_CSV}",
    "training.device=cpu",
    "training.tracking.backend=local",
    "training.progress=none",
]


class Recorder(Callback):
    """Appends every hook call (name, epoch, step, lr) to a JSON-lines file."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def _write(self, hook: str, trainer: Any, **extra: Any) -> None:
        lr = float(trainer.optimizer.param_groups[0]["lr"]) if trainer.optimizer else None
        row = {
            "hook": hook,
            "epoch": trainer.progress.epoch,
            "step": trainer.progress.step,
            "lr": lr,
            **extra,
        }
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")

    def on_fit_start(self, trainer: Any) -> None:
        self._write("on_fit_start", trainer)

    def on_train_epoch_start(self, trainer: Any, epoch: int) -> None:
        self._write("on_train_epoch_start", trainer, at=epoch)

    def on_train_step_end(self, trainer: Any, step: int, loss: float) -> None:
        self._write("on_train_step_end", trainer, at=step, loss=loss)

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> None:
        self._write("on_epoch_end", trainer, at=epoch, metrics=sorted(metrics))

    def on_fit_end(self, trainer: Any) -> None:
        self._write("on_fit_end", trainer)

    def on_exception(self, trainer: Any, error: BaseException) -> None:
        self._write("on_exception", trainer, error=type(error).__name__)


class Scraper(Callback):
    """GETs ``url`` after every epoch, as Prometheus would scrape it, and appends the body to
    a file (one JSON string per line)."""

    def __init__(self, url: str, path: str) -> None:
        self.url = url
        self.path = Path(path)

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> None:
        with urllib.request.urlopen(self.url, timeout=10) as response:
            body = response.read().decode()
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(body) + "\n")


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class SignalAtStep(Callback):
    """Sends ``signal`` to its own process after optimizer step ``step``, once: the marker file
    it creates keeps the resumed run from being killed again."""

    def __init__(self, step: int, marker: str, signal: str = "SIGKILL") -> None:
        self.step = step
        self.marker = Path(marker)
        self.signal = getattr(signals, signal)

    def on_train_step_end(self, trainer: Any, step: int, loss: float) -> None:
        if step == self.step and not self.marker.exists():
            self.marker.write_text(str(step))
            os.kill(os.getpid(), self.signal)


def subprocess_env(pycache: Path | None = None) -> dict[str, str]:
    """The environment of an ``mlp`` subprocess: this module importable, no outside MLflow
    server, and compiled bytecode cached across runs (outside the venv) to save start-up time."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLP_DEBUG", None)
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def mlp(
    *args: str, pycache: Path | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """Run the real ``mlp`` command (the venv's entry point) from the repository root."""
    command = Path(sys.executable).with_name("mlp")
    return subprocess.run(
        [str(command), *args],
        cwd=REPO_ROOT,
        env=subprocess_env(pycache),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def model_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a saved model file (RUN/model)."""
    from mlp_models import read_model_file

    return read_model_file(path).state_dict


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"tensors differ: {different}"


SHAPES_IMGSZ = 64


def shapes_config(
    root: Path, *, epochs: int, n_train: int = 16, n_val: int = 4, n_test: int = 4, **training: Any
) -> Path:
    """A one-file detection config (data, model, training) for a fresh shapes dataset under
    ``root``: ``yolov8n.yaml`` at SHAPES_IMGSZ on the CPU; ``training`` adds training keys."""
    data = write_shapes_dataset(
        root / "shapes",
        n_train=n_train,
        n_val=n_val,
        n_test=n_test,
        image_size=SHAPES_IMGSZ,
        seed=0,
    )
    config = {
        "data": {"adapter": "yolo", "path": str(data), "imgsz": SHAPES_IMGSZ, "batch_size": 8},
        "model": {"name": "yolo", "arch": "yolov8n.yaml"},
        "training": {
            "epochs": epochs,
            "seed": 0,
            "device": "cpu",
            "run_name": "shapes",
            "tracking": {"backend": "local"},
            "optimizer": {"name": "adamw", "lr": 0.003},
            "yolo": {"warmup_epochs": 0, "mosaic": 0.0},
            **training,
        },
    }
    path = root / "shapes.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
