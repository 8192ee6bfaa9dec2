"""One tracker that keeps the run folder's record and, when available, tracks to MLflow."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from mlp_obs.tracking.base import FINISHED, ExperimentTracker
from mlp_obs.tracking.jsonl_tracker import JsonlTracker


class CompositeTracker(ExperimentTracker):
    """Writes every call to ``record`` and forwards it to ``remote`` (MLflow) when there is one.

    The local record is written first, so a run keeps its history even when the tracking server
    fails mid-run; the run id is the remote one, so both records name the same run.
    ``base_tags`` (git commit, package versions) are added to every run started.
    """

    def __init__(
        self,
        record: JsonlTracker,
        remote: ExperimentTracker | None = None,
        *,
        base_tags: Mapping[str, str] | None = None,
    ) -> None:
        self.record = record
        self.remote = remote
        self.base_tags = dict(base_tags or {})

    @property
    def run_id(self) -> str | None:
        return self.record.run_id

    def start_run(
        self,
        run_name: str,
        *,
        experiment: str = "default",
        tags: Mapping[str, str] | None = None,
        run_id: str | None = None,
    ) -> str:
        all_tags = {**self.base_tags, **(tags or {})}
        if self.remote is not None:
            run_id = self.remote.start_run(
                run_name, experiment=experiment, tags=all_tags, run_id=run_id
            )
        return self.record.start_run(run_name, experiment=experiment, tags=all_tags, run_id=run_id)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.record.log_params(params)
        if self.remote is not None:
            self.remote.log_params(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.record.log_metrics(metrics, step)
        if self.remote is not None:
            self.remote.log_metrics(metrics, step)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        self.record.log_artifact(path, artifact_path)
        if self.remote is not None:
            self.remote.log_artifact(path, artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.record.set_tags(tags)
        if self.remote is not None:
            self.remote.set_tags(tags)

    def register_model(self, name: str, artifact_path: str) -> str | None:
        if self.remote is None:
            return self.record.register_model(name, artifact_path)
        version = self.remote.register_model(name, artifact_path)
        self.record.record(
            "register_model", name=name, artifact_path=artifact_path, version=version
        )
        return version

    def end_run(self, status: str = FINISHED) -> None:
        try:
            self.record.end_run(status)
        finally:
            if self.remote is not None and self.remote.run_id is not None:
                self.remote.end_run(status)
