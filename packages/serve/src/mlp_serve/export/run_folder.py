"""Reading a training run folder (what ``mlp train`` writes) without mlp-data or mlp-train.

The exporter needs the run's model, its fitted preprocessing, what the data told the model
(task, class names), the run's metrics and its tracking record. Everything but the model is
plain JSON or YAML, read here as data: importing mlp-data or mlp-train would break the
``mlp-serve[export]`` install, which holds neither.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from mlp_core.config import load_config
from mlp_core.errors import MlpError
from mlp_core.runs import RunFiles
from mlp_obs.tracking import tracked_run_id
from mlp_serve.errors import BundleError

_RUN_HINT = "Pass the run folder `mlp train` printed as its last line."


class _AnyConfig(BaseModel):
    model_config = ConfigDict(extra="allow")


@dataclass
class RunFolder:
    """The files of one finished training run, read once."""

    path: Path
    config: dict[str, Any]
    dataset: dict[str, Any]
    preprocessing: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def files(self) -> RunFiles:
        return RunFiles(self.path)

    @property
    def model_path(self) -> Path:
        return self.files.model

    @property
    def run_name(self) -> str:
        return self.path.name

    @property
    def mlflow_run_id(self) -> str | None:
        """The tracker's run id of this run, if it was tracked (the exporter logs to it)."""
        return tracked_run_id(self.path)

    @property
    def runs_root(self) -> Path:
        """The folder that holds run folders (where the default MLflow store lives)."""
        configured = (self.config.get("training") or {}).get("run_dir")
        if configured and Path(configured).is_absolute():
            return Path(configured)
        return self.path.parent

    @property
    def data_path(self) -> Path | None:
        """The data file or folder the run was trained on, if it can still be found."""
        raw = (self.config.get("data") or {}).get("path")
        if not raw:
            return None
        candidate = Path(raw)
        if candidate.is_absolute():
            return candidate if candidate.exists() else None
        # Relative paths were relative to where `mlp train` ran: try the current directory,
        # then the folders above the run folder (a run kept inside a project tree).
        for base in (Path.cwd(), *self.path.resolve().parents):
            if (base / candidate).exists():
                return base / candidate
        return None


def read_run_folder(path: str | Path) -> RunFolder:
    """The run folder at ``path``, or a :class:`BundleError` saying what is missing."""
    folder = Path(path)
    if not folder.is_dir():
        raise BundleError(f"{folder}: no such run folder", hint=_RUN_HINT)
    files = RunFiles(folder)
    missing = files.missing()
    if missing:
        raise BundleError(
            f"{folder} is not a finished training run: it lacks {', '.join(missing)}",
            hint=_RUN_HINT,
        )
    try:
        config = load_config(files.config, schema=_AnyConfig).model_dump()
    except MlpError as exc:
        raise BundleError(f"{files.config}: {exc.message}", hint=_RUN_HINT) from None
    return RunFolder(
        path=folder,
        config=config,
        dataset=_read_json(files.dataset),
        preprocessing=_read_json(files.preprocessing),
        metrics=_read_json(files.metrics) if files.metrics.exists() else {},
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: cannot be read as JSON: {exc}", hint=_RUN_HINT) from None
