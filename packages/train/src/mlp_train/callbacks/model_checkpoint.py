"""Writes the last checkpoint (each epoch, and every N steps) and the top-k best ones."""

from __future__ import annotations

from typing import Any

from mlp_train.callbacks.base import Callback


class ModelCheckpoint(Callback):
    def __init__(
        self,
        monitor: str = "val.loss",
        mode: str = "min",
        save_top_k: int = 1,
        save_last: bool = True,
        every_n_steps: int | None = None,
    ) -> None:
        self.monitor = monitor
        self.mode = mode
        self.save_top_k = save_top_k
        self.save_last = save_last
        self.every_n_steps = every_n_steps
        self.best_path: str | None = None

    def on_fit_start(self, trainer) -> None:
        if self.save_top_k > 0:
            trainer.check_monitor(self.monitor, "checkpoint.monitor")

    def on_train_step_end(self, trainer, step: int, loss: float) -> None:
        if self.every_n_steps and step % self.every_n_steps == 0 and not trainer.at_epoch_end:
            trainer.save_checkpoint("last")

    def on_epoch_end(self, trainer, epoch: int, metrics: dict[str, float]) -> None:
        if self.save_top_k > 0:
            path = trainer.save_checkpoint(
                "best",
                monitor=self.monitor,
                value=metrics[self.monitor],
                keep_best=self.save_top_k,
                mode=self.mode,
            )
            if path is not None:
                self.best_path = str(path)
        if self.save_last:
            trainer.save_checkpoint("last")

    def state_dict(self) -> dict[str, Any]:
        return {"best_path": self.best_path}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_path = state.get("best_path")
