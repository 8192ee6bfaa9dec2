"""The private folder a supervisor shares with its workers.

It is also prometheus_client's multiprocess folder (those files end in ``.db``; nothing here
does). Made by the supervisor with ``mkdtemp`` (mode 0700: the config in it may hold tokens) and
removed when it exits. Files:

- ``launch.json``: what every worker serves: repository, config, drain seconds, log level.
- ``admin.json``: the admin API's last word on each model (``load`` or ``unload``), each with
  the generation at which it was said, and the latest generation. Written under ``admin.lock``
  (an ``flock``), replaced atomically, so a reader never sees half a file.
- ``worker-<pid>.json``: one per live worker: its slot, the admin generation it has applied
  (-1 while it starts) and whether it is ready. The supervisor removes it when the worker dies,
  so these files are the list of live workers.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Action = Literal["load", "unload"]

LAUNCH = "launch.json"
ADMIN = "admin.json"
ADMIN_LOCK = "admin.lock"
WORKER_PREFIX = "worker-"


@dataclass(frozen=True)
class Launch:
    """What a worker needs to serve as its siblings do."""

    repository: str
    config: dict[str, Any]
    drain_seconds: float
    log_level: str | None


@dataclass(frozen=True)
class WorkerState:
    pid: int
    slot: int
    generation: int  # admin generation applied; -1: starting, must still catch up
    ready: bool


@dataclass
class AdminState:
    """Each model's last admin action and its generation; ``generation`` is the latest."""

    generation: int = 0
    models: dict[str, tuple[Action, int]] = field(default_factory=dict)

    def since(self, applied: int) -> list[tuple[int, str, Action]]:
        """The actions newer than generation ``applied``, oldest first."""
        newer: list[tuple[int, str, Action]] = [
            (g, name, action) for name, (action, g) in self.models.items() if g > applied
        ]
        return sorted(newer)


class SharedState:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # -- launch ----------------------------------------------------------------------------

    def write_launch(self, launch: Launch) -> None:
        _write_json(self.root / LAUNCH, launch.__dict__)

    def read_launch(self) -> Launch:
        return Launch(**json.loads((self.root / LAUNCH).read_text(encoding="utf-8")))

    # -- admin -----------------------------------------------------------------------------

    def read_admin(self) -> AdminState:
        try:
            document = json.loads((self.root / ADMIN).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return AdminState()
        models = {name: (entry[0], int(entry[1])) for name, entry in document["models"].items()}
        return AdminState(int(document["generation"]), models)

    def record_admin(self, name: str, action: Action) -> int:
        """Record ``action`` on model ``name``; returns its generation."""
        with self._admin_lock():
            state = self.read_admin()
            state.generation += 1
            state.models[name] = (action, state.generation)
            document = {"generation": state.generation, "models": state.models}
            _write_json(self.root / ADMIN, document)
            return state.generation

    @contextlib.contextmanager
    def _admin_lock(self) -> Iterator[None]:
        # Two workers answering admin requests at once must not both take generation n + 1.
        import fcntl  # here: the module is imported on every platform, workers run on Linux

        with open(self.root / ADMIN_LOCK, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # -- workers ---------------------------------------------------------------------------

    def write_worker(self, worker: WorkerState) -> None:
        _write_json(self._worker_file(worker.pid), worker.__dict__)

    def remove_worker(self, pid: int) -> None:
        self._worker_file(pid).unlink(missing_ok=True)

    def workers(self) -> dict[int, WorkerState]:
        """The live workers (those whose file the supervisor has not removed), by pid."""
        found = {}
        for path in self.root.glob(f"{WORKER_PREFIX}*.json"):
            try:
                worker = WorkerState(**json.loads(path.read_text(encoding="utf-8")))
            except (FileNotFoundError, ValueError, TypeError):
                continue  # removed meanwhile; written atomically, so never half a file
            found[worker.pid] = worker
        return found

    def live_pids(self) -> list[int]:
        return sorted(self.workers())

    def _worker_file(self, pid: int) -> Path:
        return self.root / f"{WORKER_PREFIX}{pid}.json"


def _write_json(path: Path, document: Any) -> None:
    # Written beside, then renamed over: readers see the old file or the new one, never a part.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(document), encoding="utf-8")
    os.replace(temporary, path)
