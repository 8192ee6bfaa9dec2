"""Tracking to MLflow through its client API: a local SQLite store or any tracking server.

MLflow is an optional dependency (``mlp-obs[mlflow]``), imported when a tracker is created, so
importing mlp_obs never pays for it or requires it. The client API is used rather than the
fluent ``mlflow.start_run`` so that no global state is touched: two trackers, or a user's own
MLflow code, can run in one process.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlp_core.errors import MissingDependencyError
from mlp_obs.tracking.base import (
    FINISHED,
    ExperimentTracker,
    check_status,
    param_strings,
    tag_strings,
)

INSTALL = "mlp-obs[mlflow]"
# MLflow's limits per log_batch request.
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000

_UNSAFE_PATH_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def import_mlflow_client() -> Any:
    """``MlflowClient``, or :class:`MissingDependencyError` naming the extra to install."""
    try:
        # The package itself, not only the submodule: a submodule already imported stays in
        # sys.modules after the package is gone or blocked, and would hide that it is missing.
        import mlflow.tracking
    except ImportError as exc:
        raise MissingDependencyError("MLflow tracking", INSTALL) from exc
    return mlflow.tracking.MlflowClient


class MlflowTracker(ExperimentTracker):
    """Runs, parameters, metrics, artifacts and registered models in MLflow.

    ``artifact_root`` is where experiments created by this tracker keep their artifacts (one
    folder per experiment); without it the store's default applies, which for a local store is
    ``./mlruns`` in the current directory.
    """

    def __init__(
        self, tracking_uri: str, artifact_root: str | os.PathLike[str] | None = None
    ) -> None:
        client_class = import_mlflow_client()
        self.tracking_uri = tracking_uri
        self.artifact_root = Path(artifact_root).resolve() if artifact_root is not None else None
        self.client = client_class(tracking_uri=tracking_uri)
        self._run_id: str | None = None

    @property
    def run_id(self) -> str | None:
        return self._run_id

    def start_run(
        self,
        run_name: str,
        *,
        experiment: str = "default",
        tags: Mapping[str, str] | None = None,
        run_id: str | None = None,
    ) -> str:
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            for key, value in tag_strings(tags).items():
                self.client.set_tag(run_id, key, value)
            self._run_id = run_id
            return run_id
        run = self.client.create_run(
            self._experiment_id(experiment), run_name=run_name, tags=tag_strings(tags)
        )
        created: str = run.info.run_id
        self._run_id = created
        return created

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        entries = [Param(key, value) for key, value in param_strings(params).items()]
        for chunk in _chunks(entries, _PARAMS_PER_BATCH):
            self.client.log_batch(self._active(), params=chunk)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        entries = [Metric(key, float(value), now_ms, step or 0) for key, value in metrics.items()]
        for chunk in _chunks(entries, _METRICS_PER_BATCH):
            self.client.log_batch(self._active(), metrics=chunk)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        local = Path(path)
        if local.is_dir():
            self.client.log_artifacts(self._active(), str(local), artifact_path)
        else:
            self.client.log_artifact(self._active(), str(local), artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        entries = [RunTag(key, value) for key, value in tag_strings(tags).items()]
        for chunk in _chunks(entries, _PARAMS_PER_BATCH):
            self.client.log_batch(self._active(), tags=chunk)

    def register_model(self, name: str, artifact_path: str) -> str | None:
        from mlflow.exceptions import MlflowException

        run_id = self._active()
        try:
            self.client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        artifact_uri = self.client.get_run(run_id).info.artifact_uri.rstrip("/")
        source = f"{artifact_uri}/{artifact_path.strip('/')}"
        version = self.client.create_model_version(name, source, run_id=run_id)
        return str(version.version)

    def end_run(self, status: str = FINISHED) -> None:
        self.client.set_terminated(self._active(), status=check_status(status))
        self._run_id = None

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = None
        if self.artifact_root is not None:
            folder = _UNSAFE_PATH_CHARS.sub("-", name).strip("-.") or "experiment"
            location = (self.artifact_root / folder).as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException as exc:
            # Another process created it between the lookup and the creation.
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return self.client.get_experiment_by_name(name).experiment_id

    def _active(self) -> str:
        if self._run_id is None:
            raise RuntimeError("no active run: call start_run() first")
        return self._run_id


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[start : start + size] for start in range(0, len(items), size)]
