"""One worker of ``mlp serve --workers N``: ``python -m mlp_serve.workers.worker STATE_DIR SLOT``.

The ordinary server (:func:`mlp_serve.server.serve_async`) with :class:`WorkerHooks`: it listens
on the shared ports with ``SO_REUSEPORT``, renders every worker's metrics at ``/metrics``, takes
part in the shared admin state, and stops (drains) when its supervisor goes away, so a killed
supervisor leaves no orphan serving. Its standard output is the supervisor's standard error: the
one "mlp serve: REST on ..." line on standard output is the supervisor's, once all are ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from typing import TYPE_CHECKING

from mlp_core.errors import MlpError
from mlp_obs.log import bind_context, configure_logging, get_logger
from mlp_obs.metrics import CollectorRegistry
from mlp_obs.multiprocess import multiprocess_registry
from mlp_serve.workers.admin import POLL_SECONDS, SharedAdmin
from mlp_serve.workers.shared_state import SharedState

if TYPE_CHECKING:
    from mlp_serve.dataplane import DataPlane
    from mlp_serve.server import BoundPorts

log = get_logger(__name__)


class WorkerHooks:
    """What :func:`~mlp_serve.server.serve_async` does differently in a worker."""

    reuse_port = True

    def __init__(self, state: SharedState, slot: int, parent: int) -> None:
        self.state = state
        self.slot = slot
        self.parent = parent
        self.admin: SharedAdmin | None = None
        self._watch: asyncio.Task | None = None

    def metrics_registry(self) -> CollectorRegistry:
        """What ``/metrics`` renders: every live worker's families, not only this one's."""
        return multiprocess_registry(self.state.root, self.state.live_pids)

    async def attach(self, dataplane: DataPlane, stop: asyncio.Event) -> None:
        """After the models loaded, before listening: apply the shared admin state, then keep
        following it (and the supervisor's presence) until ``stop``."""
        self.admin = SharedAdmin(self.state, dataplane.repository, self.slot)
        dataplane.admin = self.admin
        await self.admin.start()
        self._watch = asyncio.get_running_loop().create_task(self._follow(self.admin, stop))

    def on_ready(self, ports: BoundPorts) -> None:
        if self.admin is not None:
            self.admin.mark_ready()

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch

    async def _follow(self, admin: SharedAdmin, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(POLL_SECONDS)
            if os.getppid() != self.parent:
                log.warning("the supervisor is gone: stopping", worker=self.slot)
                stop.set()
                return
            try:
                await admin.poll()
            except Exception:  # a bad read must not stop following for good
                log.exception("reading the shared admin state failed")


def main(argv: list[str] | None = None) -> int:
    state_dir, slot_text = argv if argv is not None else sys.argv[1:]
    state, slot = SharedState(state_dir), int(slot_text)
    launch = state.read_launch()
    configure_logging(launch.log_level)
    # Imported after the environment is in place: the metrics' value class is chosen on import.
    from mlp_serve.config import ServeConfig
    from mlp_serve.server import serve_async

    config = ServeConfig.model_validate(launch.config)
    hooks = WorkerHooks(state, slot, parent=os.getppid())
    with bind_context(worker=slot):
        try:
            asyncio.run(
                serve_async(
                    launch.repository,
                    config,
                    on_ready=hooks.on_ready,
                    drain_seconds=launch.drain_seconds,
                    freeze_gc=True,
                    worker=hooks,
                )
            )
        except MlpError as exc:
            log.error("worker failed", error=exc.message)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
