"""mlp-train: the Trainer, callbacks, metrics, exact resume, DDP and `mlp train` / `mlp evaluate`."""

from importlib.metadata import version as _version

__version__ = _version("mlp-train")
