"""Progress: a tqdm bar with loss, metrics and ETA on a terminal; plain lines elsewhere."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from mlp_train.callbacks.base import Callback

if TYPE_CHECKING:
    from mlp_train.trainer import Trainer


class ProgressPrinter(Callback):
    def __init__(self, mode: str = "auto", stream: TextIO | None = None, every_n_steps: int = 50):
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "plain"
        self.mode = mode
        self.every_n_steps = every_n_steps
        self._bar: Any = None
        self._started = time.perf_counter()
        self._epoch_started = self._started

    def on_fit_start(self, trainer: Trainer) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self._epoch_started = time.perf_counter()
        if self.mode == "bar" and trainer.is_main:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=trainer.progress.steps_per_epoch,
                initial=trainer.progress.resumed_steps_in_epoch,
                desc=f"epoch {epoch + 1}/{trainer.config.epochs}",
                file=self.stream,
                leave=False,
                dynamic_ncols=True,
            )

    def on_train_step_end(self, trainer: Trainer, step: int, loss: float) -> None:
        if not trainer.is_main:
            return
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        elif self.mode == "plain" and step % self.every_n_steps == 0:
            epochs = trainer.config.epochs
            self._print(f"epoch {trainer.progress.epoch + 1}/{epochs} step {step} loss {loss:.4f}")

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.mode == "none" or not trainer.is_main:
            return
        elapsed = time.perf_counter() - self._started
        done = epoch + 1 - trainer.progress.start_epoch
        eta = elapsed / max(done, 1) * (trainer.config.epochs - epoch - 1)
        shown = " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if _headline(k))
        self._print(
            f"epoch {epoch + 1}/{trainer.config.epochs} {shown} "
            f"({time.perf_counter() - self._epoch_started:.1f}s, eta {eta:.0f}s)"
        )

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


# The few numbers a person watches; every metric still goes to metrics.jsonl and the tracker.
_HEADLINE = ("loss", "accuracy", "f1_macro", "roc_auc", "rmse", "r2")


def _headline(key: str) -> bool:
    return key.rpartition(".")[2] in _HEADLINE
