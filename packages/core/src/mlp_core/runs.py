"""Run folders: one folder per run, named so that a listing sorts by start time."""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timezone
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def run_name(name: str | None = None, *, now: datetime | None = None) -> str:
    """``20261126-051608-penguins-3f9a``: UTC start time, a readable name, a random suffix."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")
    parts = [stamp]
    if name:
        safe = _UNSAFE.sub("-", name).strip("-.")
        if safe:
            parts.append(safe[:48])
    parts.append(secrets.token_hex(2))
    return "-".join(parts)


def new_run_dir(root: str | Path, name: str | None = None) -> Path:
    """Create and return a fresh run folder under ``root``; never reuses an existing one."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        candidate = root / run_name(name)
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"could not create a new run folder under {root}")


class RunFiles:
    """Where things live in a run folder: what ``mlp train`` writes, and ``mlp evaluate``,
    ``mlp export`` and the tracker read. ``RunFiles(run_dir).model`` is ``run_dir / "model"``."""

    CONFIG = "config.yaml"  # the resolved config (what --resume and mlp evaluate read)
    LOG = "log.jsonl"  # structured logs
    DATASET = "dataset.json"  # what the data told the model (task, classes, inputs, splits)
    PREPROCESSING = "preprocessing.json"  # every fitted preprocessing parameter
    EPOCH_METRICS = "metrics.jsonl"  # one row per epoch (and metrics.csv beside it)
    EPOCH_METRICS_CSV = "metrics.csv"
    CHECKPOINTS = "checkpoints"  # last and best checkpoints, with index.json
    MODEL = "model"  # the final model, one file: weights + config, loadable by name
    METRICS = "metrics.json"  # final validation and test metrics
    PLOTS = "plots"  # training curves, confusion matrix or residuals (PNG)
    TRACKING = "tracking.jsonl"  # the run's tracking record (also in MLflow when installed)

    # What a finished run always holds (the exporter refuses a folder without them).
    FINISHED = (CONFIG, DATASET, PREPROCESSING, MODEL)

    def __init__(self, run_dir: str | Path) -> None:
        self.root = Path(run_dir)

    def __getattr__(self, name: str) -> Path:
        # RunFiles(run).config -> run / "config.yaml", for every name above.
        filename = getattr(type(self), name.upper(), None)
        if not isinstance(filename, str) or name != name.lower():
            raise AttributeError(name)
        return self.root / filename

    def missing(self) -> list[str]:
        """The files of a finished run that this folder lacks."""
        return [name for name in self.FINISHED if not (self.root / name).exists()]
