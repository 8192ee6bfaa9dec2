"""Checkpoints: written atomically, verified on read, never the only copy.

Every checkpoint file is listed in ``checkpoints/index.json`` with its sha256. Reading one checks
the hash and that torch can load it (``weights_only=True``: plain tensors and containers, never
arbitrary objects); a truncated or corrupt file is reported and the previous good one is used.
The two newest "last" checkpoints are kept so that one always survives a bad write.
"""

from __future__ import annotations

import io
import json
import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlp_core.errors import CheckpointError
from mlp_core.files import atomic_write_bytes, atomic_write_text, sha256_file

FORMAT = "mlp.checkpoint"
VERSION = 1
INDEX = "index.json"
LAST_KEPT = 2

log = logging.getLogger(__name__)


@dataclass
class Entry:
    file: str
    kind: str  # "last" or "best"
    epoch: int
    step: int
    sha256: str
    monitor: str | None = None
    value: float | None = None


class CheckpointStore:
    """The ``checkpoints/`` folder of a run."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    # -- writing ---------------------------------------------------------------------------

    def save(
        self,
        state: dict[str, Any],
        *,
        kind: str,
        monitor: str | None = None,
        value: float | None = None,
        keep_best: int = 1,
        mode: str = "min",
    ) -> Path | None:
        """Write ``state`` as a ``kind`` checkpoint; returns its path, or None when a best
        checkpoint does not make the top ``keep_best``."""
        entries = self.entries()
        epoch, step = int(state["epoch"]), int(state["step"])
        if kind == "best":
            if keep_best <= 0 or value is None:
                return None
            best = sorted(
                (e for e in entries if e.kind == "best"),
                key=lambda e: e.value if mode == "min" else -e.value,  # type: ignore[operator]
            )
            if len(best) >= keep_best and not _better(value, best[keep_best - 1].value, mode):
                return None
            name = f"best-epoch{epoch:04d}-step{step:08d}.pt"
        else:
            name = f"last-step{step:08d}-epoch{epoch:04d}.pt"
        path = self.folder / name
        buffer = io.BytesIO()
        torch.save({"format": FORMAT, "version": VERSION, **state}, buffer)
        atomic_write_bytes(path, buffer.getvalue())
        entry = Entry(name, kind, epoch, step, sha256_file(path), monitor, value)
        entries = [e for e in entries if e.file != name] + [entry]
        # A "last" save leaves the best ones alone: only a best save knows its top k.
        entries = self._prune(entries, keep_best if kind == "best" else None, mode)
        self._write_index(entries)
        return path

    def _prune(self, entries: list[Entry], keep_best: int | None, mode: str) -> list[Entry]:
        last = sorted((e for e in entries if e.kind == "last"), key=lambda e: e.step)
        best = sorted(
            (e for e in entries if e.kind == "best"),
            key=lambda e: e.value if mode == "min" else -e.value,  # type: ignore[operator]
        )
        keep = last[-LAST_KEPT:] + (best if keep_best is None else best[: max(keep_best, 0)])
        for entry in entries:
            if entry not in keep:
                (self.folder / entry.file).unlink(missing_ok=True)
        return keep

    def _write_index(self, entries: list[Entry]) -> None:
        document = {"format": f"{FORMAT}.index", "checkpoints": [asdict(e) for e in entries]}
        atomic_write_text(self.folder / INDEX, json.dumps(document, indent=2))

    # -- reading ---------------------------------------------------------------------------

    def entries(self) -> list[Entry]:
        index = self.folder / INDEX
        if not index.exists():
            return []
        try:
            document = json.loads(index.read_text())
            return [Entry(**row) for row in document["checkpoints"]]
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("checkpoint index %s is unreadable (%s); scanning the folder", index, exc)
            return [
                Entry(p.name, p.name.split("-")[0], -1, -1, "") for p in self.folder.glob("*.pt")
            ]

    def best(self, mode: str = "min") -> Entry | None:
        best = [e for e in self.entries() if e.kind == "best" and e.value is not None]
        if not best:
            return None
        pick = min if mode == "min" else max
        return pick(best, key=lambda e: e.value)  # type: ignore[arg-type,return-value]

    def load_latest(self, map_location: str | torch.device = "cpu") -> tuple[dict, Path]:
        """The newest checkpoint that verifies; corrupt ones are reported and skipped."""
        # At equal steps the epoch-end checkpoint (epoch + 1) goes first: it holds the
        # validation and scheduler step that a mid-epoch one at the same step lacks.
        candidates = sorted(
            self.entries(), key=lambda e: (e.step, e.kind == "last", e.epoch), reverse=True
        )
        problems = []
        for entry in candidates:
            path = self.folder / entry.file
            try:
                return load_checkpoint(path, map_location, sha256=entry.sha256 or None), path
            except CheckpointError as exc:
                problems.append(exc.message)
                log.warning("%s; trying the previous checkpoint", exc.message)
        detail = "; ".join(problems) if problems else "none was written"
        raise CheckpointError(f"no usable checkpoint in {self.folder}: {detail}")


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", *, sha256: str | None = None
) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if sha256 is not None and sha256_file(path) != sha256:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated (sha256 mismatch)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged zip
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an mlp checkpoint")
    return state


def _better(value: float, than: float | None, mode: str) -> bool:
    if than is None:
        return True
    return value < than if mode == "min" else value > than


# -- random number generators ------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    """Every RNG a training step touches, in a form ``weights_only`` loading accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
