"""The admin API's load/unload, applied by every worker before the request is answered.

The worker that receives ``POST /v2/repository/models/{m}/unload`` unloads the model itself,
records the action in the shared ``admin.json`` (generation n), and answers once every other live
worker says it has applied generation n: a client that unloads a model and then asks any worker
finds it unloaded. Each worker looks at ``admin.json`` every :data:`POLL_SECONDS` and applies what
is new, in generation order; a worker that starts (or restarts) applies the whole file before it
listens, so a restarted worker does not bring back an unloaded model.

Repository polling (new versions on disk) needs nothing shared: every worker reads the same disk.
"""

from __future__ import annotations

import asyncio
import os
import time

from mlp_obs.log import get_logger
from mlp_serve.errors import InferenceError, ModelNotFound
from mlp_serve.repository import ModelRepository
from mlp_serve.workers.shared_state import Action, SharedState, WorkerState

log = get_logger(__name__)

POLL_SECONDS = 0.2
# How long an admin request waits for the other workers to apply it: loading a large model can
# take a while; past this it answers anyway (with a warning in the log).
WAIT_SECONDS = 120.0


class SharedAdmin:
    """One worker's side of the shared admin state (:meth:`DataPlane.load_model` comes here)."""

    def __init__(self, state: SharedState, repository: ModelRepository, slot: int) -> None:
        self.state = state
        self.repository = repository
        self.slot = slot
        self.pid = os.getpid()
        self.applied = -1
        self.ready = False
        self._own: set[int] = set()  # generations this worker recorded (and applied already)
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Apply every recorded action (before this worker listens)."""
        # Listed first as "not caught up", so an admin request recorded from now on waits for us.
        self._publish()
        async with self._lock:
            await self._catch_up()

    async def poll(self) -> None:
        """Apply what other workers recorded since the last look."""
        if self.state.read_admin().generation > self.applied:
            async with self._lock:
                await self._catch_up()

    def mark_ready(self) -> None:
        self.ready = True
        self._publish()

    async def load(self, name: str) -> None:
        await self._change(name, "load")

    async def unload(self, name: str) -> None:
        await self._change(name, "unload")

    async def _change(self, name: str, action: Action) -> None:
        async with self._lock:
            failure: InferenceError | None = None
            try:
                await self._apply(name, action)
            except ModelNotFound:
                raise  # nothing changed anywhere: nothing to tell the others
            except InferenceError as exc:  # e.g. a load that failed: the state changed anyway
                failure = exc
            generation = self.state.record_admin(name, action)
            self._own.add(generation)
            await self._catch_up()
        await self._wait_for_others(generation)
        if failure is not None:
            raise failure

    async def _catch_up(self) -> None:
        admin = self.state.read_admin()
        for generation, name, action in admin.since(self.applied):
            if generation not in self._own:
                try:
                    await self._apply(name, action)
                except InferenceError as exc:  # the worker that received it answered the error
                    log.warning(
                        "admin action failed here", model=name, action=action, error=exc.message
                    )
            self.applied = generation
        self.applied = max(self.applied, admin.generation, 0)
        self._publish()

    async def _apply(self, name: str, action: Action) -> None:
        if action == "load":
            await self.repository.load(name)
        else:
            await self.repository.unload(name)

    async def _wait_for_others(self, generation: int) -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            behind = [
                w.pid
                for w in self.state.workers().values()
                if w.pid != self.pid and w.generation < generation
            ]
            if not behind:
                return
            if time.monotonic() > deadline:
                log.warning("workers did not apply an admin action in time", workers=behind)
                return
            await asyncio.sleep(0.02)

    def _publish(self) -> None:
        self.state.write_worker(WorkerState(self.pid, self.slot, self.applied, self.ready))
