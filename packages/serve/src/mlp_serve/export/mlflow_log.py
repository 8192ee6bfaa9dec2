"""Logging an exported model to the training run's MLflow record (onnx flavour).

The run folder's tracking record names the MLflow run; the store is ``MLFLOW_TRACKING_URI``
when set, else the default SQLite store beside the run folders (``<runs_root>/mlflow.db``), as
``mlp train`` chose it. MLflow is optional (``mlp-obs[mlflow]``): without it, or without a
tracked run, nothing is logged and the result says why. A failure to log never undoes an
export: the bundle on disk is complete and checked before this runs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from mlp_obs.tracking.defaults import DATABASE_NAME, TRACKING_URI_ENV, sqlite_uri
from mlp_serve.bundle import MANIFEST_FILE, MODEL_FILE
from mlp_serve.export.run_folder import RunFolder

log = logging.getLogger(__name__)


def tracking_uri_for(run: RunFolder) -> str | None:
    from_env = os.environ.get(TRACKING_URI_ENV, "").strip()
    if from_env:
        return from_env
    database = run.runs_root / DATABASE_NAME
    return sqlite_uri(database) if database.exists() else None


def log_bundle(run: RunFolder, bundle: Path, *, name: str, version: int) -> dict[str, Any]:
    """Log ``bundle/model.onnx`` (with its manifest) to the run's MLflow run; says what it did."""
    run_id = run.mlflow_run_id
    uri = tracking_uri_for(run)
    if run_id is None or uri is None:
        return {"logged": False, "reason": "the run has no MLflow tracking record"}
    try:
        import mlflow
        import onnx
        from mlflow.onnx import log_model as log_onnx_model
    except ImportError as exc:
        reason = f"MLflow is not installed ({exc.name}): pip install 'mlp-obs[mlflow]'"
        return {"logged": False, "reason": reason}
    artifact_name = f"onnx-{name}-v{version}"
    from mlflow.tracking import is_tracking_uri_set

    # set_tracking_uri also sets MLFLOW_TRACKING_URI in os.environ: put both back afterwards.
    previous = mlflow.get_tracking_uri() if is_tracking_uri_set() else None
    try:
        mlflow.set_tracking_uri(uri)
        client = mlflow.MlflowClient(tracking_uri=uri)
        client.get_run(run_id)  # a clear "not found" before anything is written
        with mlflow.start_run(run_id=run_id):
            info = log_onnx_model(
                onnx.load(bundle / MODEL_FILE),
                name=artifact_name,
                save_as_external_data=False,
                # Stated, not inferred: inference runs `uv export` and pip, for seconds.
                pip_requirements=_requirements(),
                extra_files=[str(bundle / MANIFEST_FILE)],
                metadata={"mlp.bundle.name": name, "mlp.bundle.version": version},
            )
            mlflow.set_tags({"mlp.export.bundle": str(bundle), "mlp.export.version": version})
    except Exception as exc:
        log.warning("the ONNX model was exported but not logged to MLflow: %s", exc)
        return {"logged": False, "reason": f"{type(exc).__name__}: {exc}", "run_id": run_id}
    finally:
        # Leave the caller's MLflow as it was; None unsets the URI, which mlflow handles though
        # its annotation leaves None out.
        mlflow.set_tracking_uri(previous)  # pyright: ignore[reportArgumentType]
    return {
        "logged": True,
        "run_id": run_id,
        "tracking_uri": uri,
        "artifact": artifact_name,
        "model_uri": info.model_uri,
        "flavor": "onnx",
    }


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("onnx", "onnxruntime-gpu", "onnxruntime"):
        try:
            found.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return found
