"""Choosing the tracker of a run: the run folder's record, plus MLflow when it is installed."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from mlp_core.errors import ConfigError, MissingDependencyError
from mlp_obs.tracking.composite import CompositeTracker
from mlp_obs.tracking.defaults import ARTIFACTS_FOLDER, default_tags, local_database
from mlp_obs.tracking.defaults import tracking_uri as default_tracking_uri
from mlp_obs.tracking.jsonl_tracker import FILENAME, JsonlTracker
from mlp_obs.tracking.mlflow_tracker import INSTALL, MlflowTracker

BACKENDS = ("auto", "mlflow", "local")

_log = logging.getLogger(__name__)
_missing_mlflow_warned = False
_warn_lock = threading.Lock()


def create_tracker(
    run_dir: str | os.PathLike[str],
    *,
    runs_root: str | os.PathLike[str] | None = None,
    tracking_uri: str | None = None,
    backend: str = "auto",
) -> CompositeTracker:
    """The tracker of the run kept in ``run_dir``.

    Every backend writes ``run_dir/tracking.jsonl``. ``"auto"`` also tracks to MLflow when it is
    installed (and warns once per process when it is not), ``"mlflow"`` requires MLflow, and
    ``"local"`` writes the record only. The MLflow store is ``tracking_uri``, else
    ``MLFLOW_TRACKING_URI``, else ``<runs_root>/mlflow.db`` with ``runs_root`` defaulting to the
    folder that holds ``run_dir``.
    """
    if backend not in BACKENDS:
        raise ConfigError(
            f"unknown tracking backend {backend!r}",
            hint=f"Use one of {', '.join(BACKENDS)}.",
        )
    run_dir = Path(run_dir)
    record = JsonlTracker(run_dir)
    if backend == "local":
        return CompositeTracker(record, base_tags=default_tags())

    root = Path(runs_root) if runs_root is not None else run_dir.parent
    uri = tracking_uri or default_tracking_uri(root)
    try:
        remote = _mlflow_tracker(uri)
    except MissingDependencyError:
        if backend == "mlflow":
            raise
        _warn_mlflow_missing(run_dir)
        remote = None
    return CompositeTracker(record, remote, base_tags=default_tags())


def _mlflow_tracker(uri: str) -> MlflowTracker:
    database = local_database(uri)
    if database is None:
        return MlflowTracker(uri)
    # A local store keeps its artifacts beside its database, never in the current directory.
    database.parent.mkdir(parents=True, exist_ok=True)
    return MlflowTracker(uri, artifact_root=database.parent / ARTIFACTS_FOLDER)


def _warn_mlflow_missing(run_dir: Path) -> None:
    global _missing_mlflow_warned
    with _warn_lock:
        if _missing_mlflow_warned:
            return
        _missing_mlflow_warned = True
    _log.warning(
        "MLflow is not installed: runs are recorded in %s only; "
        "pip install '%s' adds MLflow tracking",
        run_dir / FILENAME,
        INSTALL,
    )
