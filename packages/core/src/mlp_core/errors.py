"""The typed errors of mlp.

Every error carries a ``hint``: one sentence on what the user can do about it. The ``mlp`` command
prints the message and the hint; library callers catch the class they care about.
"""

from __future__ import annotations


class MlpError(Exception):
    """Base class of every error mlp raises on purpose."""

    default_hint = "Run `mlp doctor` to check the installation, or pass --debug for the traceback."

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class ConfigError(MlpError):
    """A configuration file, section, key or override is wrong."""

    default_hint = "Fix the listed keys; `--set key=value` overrides any of them."


class RegistryError(ConfigError):
    """A name (model, adapter, command, check) is not registered."""

    default_hint = "Check the spelling, or install the package that provides it."


class DataError(MlpError):
    """Input data cannot be read or does not match what was expected."""

    default_hint = "Check the file, row or column named above."


class ModelError(MlpError):
    """A model cannot be built, loaded or saved."""

    default_hint = "Check the model name, its arguments and the weights file."


class TrainingError(MlpError):
    """Training cannot start or cannot go on."""

    default_hint = "The last good checkpoint is kept; fix the cause and resume with --resume."


class CheckpointError(TrainingError):
    """A checkpoint is missing, truncated, corrupt or from another model."""


class ServingError(MlpError):
    """A model cannot be exported, loaded or served."""

    default_hint = "Check the model repository and the request named above."


class MissingDependencyError(MlpError):
    """An optional package needed for this feature is not installed."""

    def __init__(self, feature: str, install: str) -> None:
        super().__init__(
            f"{feature} needs a package that is not installed",
            hint=f"pip install '{install}'",
        )
        self.feature = feature
        self.install = install
