"""Logging an exported model to the training run's MLflow record (onnx flavour).

The run folder's tracking record names the MLflow run; the store is ``MLFLOW_TRACKING_URI``
when set, else the default SQLite store beside the run folders (``<runs_root>/mlflow.db``), as
``mlp train`` chose it. MLflow is optional (``mlp-obs[mlflow]``): without it, or without a
tracked run, nothing is logged and the result says why. A failure to log never undoes an
export: the bundle on disk is complete and checked before this runs.

MLflow is given the model's environment (the versions the bundle's manifest recorded), so it
infers nothing: no `uv export` of the workspace, no guess at pip's version, no warning about it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlp_obs.tracking.defaults import DATABASE_NAME, TRACKING_URI_ENV, sqlite_uri
from mlp_serve.bundle import MANIFEST_FILE, MODEL_FILE, TORCHSCRIPT_FILE
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
        with mlflow.start_run(run_id=run_id), _quiet_mlflow():
            info = log_onnx_model(
                onnx.load(bundle / MODEL_FILE),
                name=artifact_name,
                save_as_external_data=False,
                # Stated, not inferred: inference runs `uv export` and pip, for seconds.
                conda_env=conda_env(_recorded_packages(bundle)),
                extra_files=_extra_files(bundle),
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


# Files of a bundle logged beside its model.onnx when present (--format torchscript).
EXTRA_FILES = (MANIFEST_FILE, TORCHSCRIPT_FILE)


def _extra_files(bundle: Path) -> list[str]:
    return [str(bundle / name) for name in EXTRA_FILES if (bundle / name).is_file()]


# Set while the model is logged: MLflow reads them at each call. Auto-detection of a uv project
# would describe the workspace the command runs in, not the model; the progress bar of its
# artifact copy is a terminal animation in the middle of the command's output.
_MLFLOW_ENV = {"MLFLOW_UV_AUTO_DETECT": "false", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


@contextlib.contextmanager
def _quiet_mlflow() -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in _MLFLOW_ENV}
    os.environ.update(_MLFLOW_ENV)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def conda_env(packages: dict[str, str]) -> dict[str, Any]:
    """The environment that serves the ONNX model: Python, onnx and onnxruntime as exported.

    ``packages`` are the versions the manifest recorded (the ones the parity check ran on).
    MLflow adds its own pin. ``pip`` is listed without a version, as MLflow would list it
    after warning that it could not find one (uv environments hold no pip).
    """
    requirements = [
        f"{name}=={packages[name]}"
        for name in ("onnx", "onnxruntime-gpu", "onnxruntime")
        if name in packages
    ]
    python = packages.get("python") or ".".join(map(str, _python_version()))
    return {
        "name": "mlflow-env",
        "channels": ["conda-forge"],
        "dependencies": [f"python={python}", "pip", {"pip": requirements}],
    }


def _recorded_packages(bundle: Path) -> dict[str, str]:
    """The manifest's package versions, else those installed here (a bundle without them)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        recorded = json.loads((bundle / MANIFEST_FILE).read_text(encoding="utf-8"))["packages"]
    except (OSError, ValueError, KeyError, TypeError):
        recorded = {}
    if isinstance(recorded, dict) and recorded:
        return {str(k): str(v) for k, v in recorded.items()}
    found = {}
    for name in ("onnx", "onnxruntime-gpu", "onnxruntime"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def _python_version() -> tuple[int, int, int]:
    import sys

    return sys.version_info[:3]
