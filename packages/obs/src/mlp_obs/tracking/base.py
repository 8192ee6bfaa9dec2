"""The interface every experiment tracker implements, and what they share."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from mlp_core.config import flatten

FINISHED = "FINISHED"
FAILED = "FAILED"
KILLED = "KILLED"
END_STATUSES = (FINISHED, FAILED, KILLED)


class ExperimentTracker(ABC):
    """Records one run at a time: its parameters, metrics, artifacts, tags and models.

    As a context manager it ends the run it holds on leaving the block: FINISHED, FAILED when an
    exception escapes, KILLED on Ctrl-C::

        tracker.start_run("penguins", experiment="tabular")
        with tracker:
            tracker.log_params(config)
            tracker.log_metrics({"val.loss": 0.3}, step=1)
    """

    @abstractmethod
    def start_run(
        self,
        run_name: str,
        *,
        experiment: str = "default",
        tags: Mapping[str, str] | None = None,
        run_id: str | None = None,
    ) -> str:
        """Start a run in ``experiment`` (created when missing) and return its id.

        ``run_id`` continues an earlier run instead (a resumed training run), so its whole
        history stays in one place."""

    @property
    @abstractmethod
    def run_id(self) -> str | None:
        """The id of the active run, or None between runs."""

    @abstractmethod
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record parameters; nested mappings become dotted keys (``training.epochs``)."""

    @abstractmethod
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record metric values, optionally at a training step."""

    @abstractmethod
    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Attach a file (or a folder's contents) to the run, under ``artifact_path``."""

    @abstractmethod
    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set or overwrite tags of the run."""

    @abstractmethod
    def register_model(self, name: str, artifact_path: str) -> str | None:
        """Register the run's ``artifact_path`` as a new version of model ``name``.

        Returns the version, or None for a tracker without a model registry.
        """

    @abstractmethod
    def end_run(self, status: str = FINISHED) -> None:
        """End the active run with ``status`` (FINISHED, FAILED or KILLED)."""

    def __enter__(self) -> ExperimentTracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.run_id is None:
            return
        if exc_type is None:
            self.end_run(FINISHED)
        elif issubclass(exc_type, KeyboardInterrupt):
            self.end_run(KILLED)
        else:
            self.end_run(FAILED)


def param_strings(params: Mapping[str, Any]) -> dict[str, str]:
    """Flatten nested parameters and turn values into the strings MLflow stores."""
    return {key: str(value) for key, value in flatten(dict(params)).items()}


def tag_strings(tags: Mapping[str, Any] | None) -> dict[str, str]:
    return {str(key): str(value) for key, value in (tags or {}).items()}


def check_status(status: str) -> str:
    if status not in END_STATUSES:
        raise ValueError(f"run status must be one of {', '.join(END_STATUSES)}, got {status!r}")
    return status
