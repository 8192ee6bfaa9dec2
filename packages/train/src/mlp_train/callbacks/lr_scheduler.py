"""Steps the trainer's learning-rate scheduler at the interval it needs."""

from __future__ import annotations

from mlp_train.callbacks.base import Callback


class LearningRateScheduler(Callback):
    """Per epoch (step, cosine), per optimizer step (one-cycle), or on a monitored metric
    (reduce-on-plateau). The scheduler itself lives on the trainer, so checkpoints hold its
    state with the optimizer's."""

    def __init__(self, monitor: str | None = None) -> None:
        self.monitor = monitor

    def on_fit_start(self, trainer) -> None:
        if trainer.scheduler_interval == "plateau" and self.monitor:
            trainer.check_monitor(self.monitor, "scheduler.monitor")

    def on_train_step_end(self, trainer, step: int, loss: float) -> None:
        stepwise = trainer.scheduler is not None and trainer.scheduler_interval == "step"
        # OneCycleLR refuses to step past its planned total (e.g. a resumed longer run).
        if stepwise and trainer.scheduler.last_epoch < trainer.scheduler.total_steps:
            trainer.scheduler.step()

    def on_epoch_end(self, trainer, epoch: int, metrics: dict[str, float]) -> None:
        if trainer.scheduler is None:
            return
        if trainer.scheduler_interval == "epoch":
            trainer.scheduler.step()
        elif trainer.scheduler_interval == "plateau":
            trainer.scheduler.step(metrics[self.monitor or "val.loss"])
