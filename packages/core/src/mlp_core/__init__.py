"""mlp-core: configuration, registry, errors, helpers and the ``mlp`` command (no torch)."""

from importlib.metadata import version as _version

from mlp_core.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    MissingDependencyError,
    MlpError,
    ModelError,
    RegistryError,
    ServingError,
    TrainingError,
)
from mlp_core.registry import Registry

__version__ = _version("mlp-core")

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "MissingDependencyError",
    "MlpError",
    "ModelError",
    "Registry",
    "RegistryError",
    "ServingError",
    "TrainingError",
    "__version__",
]
