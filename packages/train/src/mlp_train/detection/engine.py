"""ultralytics' ``DetectionTrainer``, writing into an mlp run folder.

:class:`RunFolderTrainer` is ultralytics' own trainer (its data pipeline, augmentations, loss,
assigner, EMA, validation and checkpoints), with three changes:

- its checkpoints go to ``RUN/weights/{last,best}.pt`` and everything else it writes (its
  ``results.csv``, ``args.yaml`` and plots) to ``RUN/ultralytics/``;
- each epoch appends one row to ``RUN/metrics.jsonl`` and ``metrics.csv`` (train and val box,
  cls and dfl losses; val precision, recall, mAP50, mAP50-95; learning rate; seconds), prints
  mlp's progress line and sends the row to the tracker;
- Ctrl-C stops it with a checkpoint in place (:class:`~mlp_train.trainer.TrainingInterrupted`).

Importing this module imports ultralytics, offline (:mod:`mlp_models.ultralytics_env`). The
class is importable by name, which ultralytics' multi-GPU launcher needs: with ``device: [0,
1]`` it starts one process per GPU that imports this module and builds the trainer again.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

from mlp_models.ultralytics_env import import_ultralytics
from mlp_train.detection.rows import append_row, drop_rows_from
from mlp_train.detection.run import WEIGHTS

import_ultralytics()

# After the offline switches, which import_ultralytics() sets before the first import.
from ultralytics.models.yolo.detect import DetectionTrainer  # noqa: E402
from ultralytics.utils import DEFAULT_CFG, RANK  # noqa: E402

# ultralytics' metric names -> mlp's (split.name).
METRIC_NAMES = {
    "metrics/precision(B)": "val.precision",
    "metrics/recall(B)": "val.recall",
    "metrics/mAP50(B)": "val.mAP50",
    "metrics/mAP50-95(B)": "val.mAP50-95",
}
HEADLINE = ("train.box_loss", "train.cls_loss", "val.mAP50", "val.mAP50-95")


def mlp_metric_name(key: str) -> str:
    """``train/box_loss`` -> ``train.box_loss``; ``metrics/mAP50(B)`` -> ``val.mAP50``."""
    return METRIC_NAMES.get(key) or key.replace("/", ".")


class RunFolderTrainer(DetectionTrainer):
    """ultralytics' detection trainer inside an mlp run folder (``save_dir`` is
    ``RUN/ultralytics``); ``tracker`` and ``progress`` are set by whoever runs it."""

    tracker: Any = None
    progress: str = "plain"  # "none" silences the epoch lines

    def __init__(
        self,
        cfg: Any = DEFAULT_CFG,
        overrides: dict[str, Any] | None = None,
        _callbacks: Any = None,
    ) -> None:
        super().__init__(cfg, overrides, _callbacks)
        with contextlib.suppress(OSError):  # the empty weights folder ultralytics made
            self.wdir.rmdir()
        self.run_dir = Path(self.save_dir).parent
        self.wdir = self.run_dir / WEIGHTS
        self.wdir.mkdir(parents=True, exist_ok=True)
        self.last, self.best = self.wdir / "last.pt", self.wdir / "best.pt"
        self._epoch_started = time.perf_counter()
        self._fit_started = time.perf_counter()
        self.add_callback("on_train_start", _on_train_start)
        self.add_callback("on_train_epoch_start", _on_epoch_start)

    def save_metrics(self, metrics: dict[str, Any]) -> None:
        super().save_metrics(metrics)  # ultralytics' results.csv, which its plots read
        row = {
            "epoch": self.epoch,
            **{mlp_metric_name(key): float(value) for key, value in metrics.items()},
            "epoch_seconds": time.perf_counter() - self._epoch_started,
        }
        append_row(self.run_dir, row)
        if self.tracker is not None:
            self.tracker.log_metrics(
                {k: v for k, v in row.items() if k != "epoch"}, step=self.epoch
            )
        if self.progress != "none":
            self._print_progress(row)

    def _print_progress(self, row: dict[str, Any]) -> None:
        done = self.epoch + 1 - self.start_epoch
        elapsed = time.perf_counter() - self._fit_started
        eta = elapsed / max(done, 1) * (self.epochs - self.epoch - 1)
        shown = " ".join(f"{key} {row[key]:.4f}" for key in HEADLINE if key in row)
        print(
            f"epoch {self.epoch + 1}/{self.epochs} {shown} "
            f"({row['epoch_seconds']:.1f}s, eta {eta:.0f}s)",
            file=sys.stderr,
            flush=True,
        )

    def save_model(self) -> Any:
        """ultralytics' checkpoints, written atomically: a run killed while saving keeps its
        previous last.pt instead of a truncated one (ultralytics writes in place)."""
        final = {"last": self.last, "best": self.best}
        staged = {name: path.with_name(f"{path.name}.part") for name, path in final.items()}
        self.last, self.best = staged["last"], staged["best"]
        try:
            saved = super().save_model()
        finally:
            self.last, self.best = final["last"], final["best"]
        for name, path in staged.items():
            if path.exists():
                os.replace(path, final[name])
        return saved

    def _do_train(self) -> None:
        try:
            super()._do_train()
        except KeyboardInterrupt:
            # Ctrl-C. Every finished epoch left weights/last.pt (the exact state a resume
            # needs); in the first epoch there is none yet: keep what it has learnt so far.
            if RANK in {-1, 0} and not self.last.exists() and self.ema is not None:
                self.metrics = self.metrics or {}
                self.save_model()
            raise


def _on_train_start(trainer: RunFolderTrainer) -> None:
    trainer._fit_started = time.perf_counter()
    if RANK in {-1, 0}:
        drop_rows_from(trainer.run_dir, trainer.start_epoch)


def _on_epoch_start(trainer: RunFolderTrainer) -> None:
    trainer._epoch_started = time.perf_counter()


__all__ = ["RunFolderTrainer", "mlp_metric_name"]
