"""mlp-data."""

from importlib.metadata import version as _version

__version__ = _version("mlp-data")
