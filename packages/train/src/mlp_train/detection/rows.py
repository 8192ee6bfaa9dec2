"""The per-epoch rows of a detection run: ``metrics.jsonl`` and ``metrics.csv``, one row per
epoch, kept one row per epoch across a resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from mlp_core.runs import RunFiles


def append_row(run_dir: Path, row: dict[str, Any]) -> None:
    files = RunFiles(run_dir)
    with open(files.epoch_metrics, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
    new = not files.epoch_metrics_csv.exists()
    with open(files.epoch_metrics_csv, "a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row), extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)


def drop_rows_from(run_dir: Path, epoch: int) -> None:
    """A resumed run trains from ``epoch`` again: drop the rows a killed run wrote for it and
    later, so that each epoch keeps one row."""
    files = RunFiles(run_dir)
    rows = read_rows(run_dir)
    kept = [row for row in rows if row["epoch"] < epoch]
    if len(kept) == len(rows):
        return
    files.epoch_metrics.unlink(missing_ok=True)
    files.epoch_metrics_csv.unlink(missing_ok=True)
    for row in kept:
        append_row(run_dir, row)


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    path = RunFiles(run_dir).epoch_metrics
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
