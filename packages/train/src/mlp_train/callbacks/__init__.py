"""Callbacks of the training loop; see :mod:`mlp_train.callbacks.base` for the hooks."""

from mlp_train.callbacks.base import Callback
from mlp_train.callbacks.early_stopping import EarlyStopping
from mlp_train.callbacks.lr_scheduler import LearningRateScheduler
from mlp_train.callbacks.metrics_logger import MetricsLogger
from mlp_train.callbacks.model_checkpoint import ModelCheckpoint
from mlp_train.callbacks.progress_printer import ProgressPrinter

__all__ = [
    "Callback",
    "EarlyStopping",
    "LearningRateScheduler",
    "MetricsLogger",
    "ModelCheckpoint",
    "ProgressPrinter",
]
