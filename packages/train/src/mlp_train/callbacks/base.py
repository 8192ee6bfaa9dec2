"""The hook interface of the training loop (an Observer), and the one function that calls it.

A callback overrides the hooks it needs; the trainer calls them, through :func:`call_hooks`, in
this order::

    on_fit_start
    for each epoch:
        on_train_epoch_start
        on_train_step_end      after every optimizer step
        on_epoch_end           after validation, with the epoch's metrics
    on_fit_end                 (or on_exception, then the error propagates)

Callbacks read where the loop is from ``trainer.progress`` (:class:`mlp_train.progress.Progress`)
and the options from ``trainer.config``. A callback that keeps state across epochs (early
stopping's patience) returns it from ``state_dict`` so that it is saved in every checkpoint and
restored on resume. Callbacks run on every rank; those that write files check ``trainer.is_main``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from mlp_train.trainer import Trainer

Hook = Literal[
    "on_fit_start",
    "on_train_epoch_start",
    "on_train_step_end",
    "on_epoch_end",
    "on_fit_end",
    "on_exception",
]


class Callback:
    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first epoch (after a resume has restored the state)."""

    def on_train_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """At the start of each training epoch."""

    def on_train_step_end(self, trainer: Trainer, step: int, loss: float) -> None:
        """After each optimizer step; ``loss`` is that step's (unaccumulated) training loss."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        """After training and validation of an epoch; ``metrics`` holds ``train.loss``,
        ``val.loss``, ``val.<metric>`` and ``lr``."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """After the last epoch, or when training stopped early."""

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        """When training fails or is interrupted, before the error propagates."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    @property
    def state_key(self) -> str:
        """The key of this callback's state in a checkpoint."""
        return type(self).__qualname__


def call_hooks(callbacks: Iterable[Callback], hook: Hook, trainer: Trainer, *args: Any) -> None:
    """Call ``hook`` on every callback, in order (Lightning's ``trainer/call.py`` does the same)."""
    for callback in callbacks:
        getattr(callback, hook)(trainer, *args)
