"""Steps the trainer's learning-rate scheduler at the interval it needs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch.optim.lr_scheduler import OneCycleLR, ReduceLROnPlateau

from mlp_train.callbacks.base import Callback

if TYPE_CHECKING:
    from mlp_train.trainer import Trainer


class LearningRateScheduler(Callback):
    """Per epoch (step, cosine), per optimizer step (one-cycle), or on a monitored metric
    (reduce-on-plateau). The scheduler itself lives on the trainer, so checkpoints hold its
    state with the optimizer's."""

    def __init__(self, monitor: str | None = None) -> None:
        self.monitor = monitor

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.scheduler_interval == "plateau" and self.monitor:
            trainer.check_monitor(self.monitor, "scheduler.monitor")

    def on_train_step_end(self, trainer: Trainer, step: int, loss: float) -> None:
        scheduler = trainer.scheduler
        # One-cycle is the stepwise one; it refuses to step past its planned total (e.g. in a
        # resumed longer run).
        if isinstance(scheduler, OneCycleLR) and scheduler.last_epoch < scheduler.total_steps:
            scheduler.step()

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        scheduler = trainer.scheduler
        if isinstance(scheduler, ReduceLROnPlateau):
            scheduler.step(metrics[self.monitor or "val.loss"])
        elif scheduler is not None and trainer.scheduler_interval == "epoch":
            scheduler.step()
