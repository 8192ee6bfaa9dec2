"""``mlp serve --workers N``: N server processes behind the same REST and gRPC ports.

A supervisor (:mod:`.supervisor`) reserves both ports, starts N workers and restarts one that
dies. Each worker (:mod:`.worker`) is the ordinary server (:func:`mlp_serve.server.serve_async`)
with its own copy of the models, listening on the shared ports with ``SO_REUSEPORT`` so that the
kernel spreads connections across the workers. What must agree across them goes through one
private folder (:mod:`.shared_state`): the metrics (prometheus_client's multiprocess files, so
``/metrics`` sums every worker whichever answers), the admin API's load/unload (every worker
applies it before the request is answered, :mod:`.admin`), and which workers are alive and
ready. Linux only: elsewhere ``SO_REUSEPORT`` does not balance connections.

``workers: 1`` (the default) is the plain single-process server; ``0`` or ``"auto"`` is one
worker per CPU this process may use (its affinity and its cgroup's CPU quota).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlp_serve.workers.supervisor import resolve_workers, serve_workers

__all__ = ["resolve_workers", "serve_workers"]


def __getattr__(name: str) -> Any:
    # Lazy, so that ``python -m mlp_serve.workers.worker`` does not import the worker module
    # twice (once here, once as __main__).
    if name in __all__:
        from mlp_serve.workers import supervisor

        return getattr(supervisor, name)
    raise AttributeError(f"module 'mlp_serve.workers' has no attribute {name!r}")
