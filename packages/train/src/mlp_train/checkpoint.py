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
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from mlp_core.errors import CheckpointError
from mlp_core.files import atomic_write_bytes, atomic_write_text, sha256_file

FORMAT = "mlp.checkpoint"
# 2: the loop counters are under "progress" (mlp-train 0.2); 1 had them at the top level.
VERSION = 2
INDEX = "index.json"
LAST_KEPT = 2

log = logging.getLogger(__name__)


Kind = Literal["last", "best"]


@dataclass
class Entry:
    file: str
    kind: str  # "last" or "best"
    epoch: int
    step: int
    sha256: str
    monitor: str | None = None
    value: float | None = None


def checkpoint_file(kind: Kind, progress: Mapping[str, Any]) -> str:
    """The file name of a ``kind`` checkpoint at ``progress`` (a Progress.state_dict())."""
    epoch, step = int(progress["epoch"]), int(progress["step"])
    if kind == "best":
        return f"best-epoch{epoch:04d}-step{step:08d}.pt"
    return f"last-step{step:08d}-epoch{epoch:04d}.pt"


class CheckpointStore:
    """The ``checkpoints/`` folder of a run: files and their index, no policy.

    Which checkpoints to keep is the caller's decision (:class:`~mlp_train.callbacks.
    ModelCheckpoint` keeps the top k); the store writes, lists, verifies and removes. One rule
    stays here because it is about storage, not choice: a "last" write keeps the previous "last"
    file, so a crash during the write never leaves a run without a good checkpoint.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    # -- writing ---------------------------------------------------------------------------

    def write(
        self,
        state: dict[str, Any],
        *,
        kind: Kind,
        monitor: str | None = None,
        value: float | None = None,
    ) -> Path:
        """Write ``state`` (with its ``progress``) as a ``kind`` checkpoint and index it."""
        progress = state["progress"]
        epoch, step = int(progress["epoch"]), int(progress["step"])
        name = checkpoint_file(kind, progress)
        path = self.folder / name
        buffer = io.BytesIO()
        torch.save({"format": FORMAT, "version": VERSION, **state}, buffer)
        atomic_write_bytes(path, buffer.getvalue())
        entry = Entry(name, kind, epoch, step, sha256_file(path), monitor, value)
        entries = [e for e in self.entries() if e.file != name] + [entry]
        if kind == "last":
            last = sorted((e for e in entries if e.kind == "last"), key=lambda e: e.step)
            for old in last[:-LAST_KEPT]:
                (self.folder / old.file).unlink(missing_ok=True)
                entries.remove(old)
        self._write_index(entries)
        return path

    def remove(self, file: str) -> None:
        """Delete a checkpoint file and its index entry."""
        (self.folder / file).unlink(missing_ok=True)
        self._write_index([e for e in self.entries() if e.file != file])

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
        """The best "best" checkpoint by its monitored value, or None."""
        scored = [(e.value, e) for e in self.entries() if e.kind == "best" and e.value is not None]
        if not scored:
            return None
        pick = min if mode == "min" else max
        return pick(scored, key=lambda pair: pair[0])[1]

    def load_latest(self, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], Path]:
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
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {state.get('version')!r}; this mlp-train "
            f"reads version {VERSION}",
            hint="Resume it with the mlp-train version that wrote it, or start a new run.",
        )
    return state


# -- random number generators ------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    """Every RNG a training step touches, in a form ``weights_only`` loading accepts."""
    numpy_state = np.random.get_state(legacy=True)
    if isinstance(numpy_state, dict):  # only for bit generators other than the legacy MT19937
        raise CheckpointError("numpy's global random state is not the legacy MT19937 one")
    kind, keys, pos, has_gauss, cached = numpy_state
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
