"""mlp-obs: structured logging, Prometheus metrics, experiment tracking and health checks."""

from importlib.metadata import version as _version

__version__ = _version("mlp-obs")
