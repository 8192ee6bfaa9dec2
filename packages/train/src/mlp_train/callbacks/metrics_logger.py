"""Writes each epoch's metrics to metrics.jsonl and metrics.csv in the run folder, to the
experiment tracker and to the Prometheus training metrics."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlp_core.files import atomic_write_text
from mlp_core.runs import RunFiles
from mlp_train.callbacks.base import Callback

if TYPE_CHECKING:
    from mlp_train.trainer import Trainer


class MetricsLogger(Callback):
    def __init__(
        self,
        run_dir: str | Path,
        tracker: Any = None,
        prometheus: Any = None,
        *,
        system_metrics: bool = False,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.tracker = tracker
        self.prometheus = prometheus  # mlp_obs.metrics.TrainingMetrics, or None
        # CPU, memory and GPU use, tracked with each epoch's metrics (training.tracking).
        self.system_metrics = system_metrics
        self._epoch_started = time.perf_counter()
        self._samples = 0

    def on_fit_start(self, trainer: Trainer) -> None:
        # A run resumed from an older checkpoint (the newest was corrupt) trains some epochs
        # again: drop the rows they wrote before, so that each epoch keeps one row.
        start = trainer.progress.start_epoch
        if trainer.is_main and start > 0:
            self._drop_rows_from(start)

    def _drop_rows_from(self, epoch: int) -> None:
        files = RunFiles(self.run_dir)
        jsonl, table = files.epoch_metrics, files.epoch_metrics_csv
        if jsonl.exists():
            lines = [line for line in jsonl.read_text(encoding="utf-8").splitlines() if line]
            kept = [line for line in lines if json.loads(line)["epoch"] < epoch]
            if len(kept) < len(lines):
                atomic_write_text(jsonl, "".join(f"{line}\n" for line in kept))
        if table.exists():
            with open(table, newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                fields, rows = reader.fieldnames or [], list(reader)
            kept_rows = [row for row in rows if int(row["epoch"]) < epoch]
            if len(kept_rows) < len(rows):
                buffer = io.StringIO()
                writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\r\n")
                writer.writeheader()
                writer.writerows(kept_rows)
                atomic_write_text(table, buffer.getvalue())

    def on_train_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self._epoch_started = time.perf_counter()
        self._samples = 0

    def on_train_step_end(self, trainer: Trainer, step: int, loss: float) -> None:
        self._samples += trainer.progress.last_step_samples
        every = trainer.config.log_every_n_steps
        if self.tracker is not None and trainer.is_main and step % every == 0:
            self.tracker.log_metrics({"train.loss_step": loss}, step=step)
        if self.prometheus is not None:
            self.prometheus.step(trainer.run_name)

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        seconds = time.perf_counter() - self._epoch_started
        # Every rank's Prometheus series (its epoch time and throughput are its own; the losses
        # and metrics were summed over the ranks, the same on each); the files are rank 0's.
        if self.prometheus is not None:
            losses = {k.split(".")[0]: v for k, v in metrics.items() if k.endswith(".loss")}
            values = {}
            for key, value in metrics.items():
                split, _, name = key.partition(".")
                if name and name != "loss":
                    values.setdefault(split, {})[name] = value
            self.prometheus.observe_epoch(trainer.run_name, seconds, self._samples, losses, values)
        if not trainer.is_main:
            return
        row = {"epoch": epoch, "step": trainer.progress.step, **metrics, "epoch_seconds": seconds}
        with open(RunFiles(self.run_dir).epoch_metrics, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        self._append_csv(row)
        if self.tracker is not None:
            self.tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            if self.system_metrics:
                from mlp_obs.system import system_snapshot

                self.tracker.log_metrics(system_snapshot(), step=epoch)

    def _append_csv(self, row: dict[str, Any]) -> None:
        path = RunFiles(self.run_dir).epoch_metrics_csv
        new = not path.exists()
        with open(path, "a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row), extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
