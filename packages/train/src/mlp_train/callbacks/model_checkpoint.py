"""Writes the last checkpoint (each epoch, and every N steps) and keeps the top-k best ones.

The policy lives here, as in Lightning's ``ModelCheckpoint.best_k_models``: which epochs make the
top k by the monitored metric, and which file to drop when a better one comes. The trainer's
:class:`~mlp_train.checkpoint.CheckpointStore` only writes, indexes and removes the files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from mlp_train.callbacks.base import Callback
from mlp_train.checkpoint import checkpoint_file

if TYPE_CHECKING:
    from mlp_train.trainer import Trainer


class ModelCheckpoint(Callback):
    def __init__(
        self,
        monitor: str = "val.loss",
        mode: Literal["min", "max"] = "min",
        save_top_k: int = 1,
        save_last: bool = True,
        every_n_steps: int | None = None,
    ) -> None:
        self.monitor = monitor
        self.mode = mode
        self.save_top_k = save_top_k
        self.save_last = save_last
        self.every_n_steps = every_n_steps
        # file name -> monitored value of the best checkpoints kept (alike on every rank).
        self.best_k_models: dict[str, float] = {}

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.save_top_k > 0:
            trainer.check_monitor(self.monitor, "checkpoint.monitor")
        # The index is what is on disk: a resumed run ranks new epochs against those files
        # (also when it resumed from an older checkpoint than the newest best one).
        store = trainer.store
        if store is not None:
            self.best_k_models = {
                e.file: e.value
                for e in store.entries()
                if e.kind == "best" and e.monitor == self.monitor and e.value is not None
            }

    def on_train_step_end(self, trainer: Trainer, step: int, loss: float) -> None:
        if self.every_n_steps and step % self.every_n_steps == 0:
            trainer.save_checkpoint("last")

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        if self.save_top_k > 0:
            self._save_if_top_k(trainer, metrics[self.monitor])
        if self.save_last:
            trainer.save_checkpoint("last")

    def _save_if_top_k(self, trainer: Trainer, value: float) -> None:
        # Every rank decides alike (the metrics are synchronised), so all of them take part in
        # the save's barriers or none does; rank 0 alone touches the files.
        store = trainer.store
        worst = self._worst()
        if store is None or (
            len(self.best_k_models) >= self.save_top_k
            and worst is not None
            and not self._better(value, self.best_k_models[worst])
        ):
            return
        trainer.save_checkpoint("best", monitor=self.monitor, value=value)
        self.best_k_models[checkpoint_file("best", trainer.progress.state_dict())] = value
        while len(self.best_k_models) > self.save_top_k:
            dropped = self._worst()
            if dropped is None:
                break
            del self.best_k_models[dropped]
            if trainer.is_main:
                store.remove(dropped)

    def _worst(self) -> str | None:
        if not self.best_k_models:
            return None
        pick = max if self.mode == "min" else min
        return pick(self.best_k_models, key=self.best_k_models.__getitem__)

    def _better(self, value: float, than: float) -> bool:
        return value < than if self.mode == "min" else value > than
