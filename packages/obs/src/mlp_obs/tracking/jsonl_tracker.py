"""A tracker that needs nothing: one JSON line per call in ``<run_dir>/tracking.jsonl``."""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mlp_core.runs import RunFiles
from mlp_obs.tracking.base import (
    FINISHED,
    ExperimentTracker,
    check_status,
    param_strings,
    tag_strings,
)

FILENAME = RunFiles.TRACKING


class JsonlTracker(ExperimentTracker):
    """Appends each call as ``{"time": ..., "event": ..., "run_id": ..., ...}``.

    Lines are appended and flushed one by one, so a crashed run keeps everything it logged and
    the file can be followed while training runs. Artifacts are recorded by absolute path,
    not copied: they already live in the run folder.
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / FILENAME
        self._run_id: str | None = None
        self._lock = threading.Lock()

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
        """Start a run; ``run_id`` reuses another tracker's id so both records match."""
        self._run_id = run_id or uuid.uuid4().hex
        self.record("start_run", run_name=run_name, experiment=experiment, tags=tag_strings(tags))
        return self._run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.record("log_params", params=param_strings(params))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        values = {key: float(value) for key, value in metrics.items()}
        self.record("log_metrics", step=step, metrics=values)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        self.record("log_artifact", path=str(Path(path).resolve()), artifact_path=artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.record("set_tags", tags=tag_strings(tags))

    def register_model(self, name: str, artifact_path: str) -> str | None:
        self.record("register_model", name=name, artifact_path=artifact_path, version=None)
        return None

    def end_run(self, status: str = FINISHED) -> None:
        self.record("end_run", status=check_status(status))
        self._run_id = None

    def record(self, event: str, **fields: Any) -> None:
        """Append one event of the active run."""
        line = {
            "time": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
            "event": event,
            "run_id": self._run_id,
            **fields,
        }
        text = json.dumps(line, default=str) + "\n"
        with self._lock:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(text)


def read_events(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The events recorded in ``run_dir/tracking.jsonl``, oldest first; none if there is no
    record. A torn last line (a killed run) is skipped: the rest of the record still counts."""
    path = Path(run_dir) / FILENAME
    if not path.exists():
        return []
    events = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                event = json.loads(line) if line.strip() else None
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
    return events


def tracked_run_id(run_dir: str | os.PathLike[str]) -> str | None:
    """The tracker's run id for ``run_dir`` (its first ``start_run`` event), if it was tracked:
    a resumed run continues it, an exporter logs the model to it."""
    for event in read_events(run_dir):
        if event.get("event") == "start_run" and event.get("run_id"):
            return str(event["run_id"])
    return None
