"""The server process: REST (uvicorn) and gRPC in one asyncio loop, sharing one DataPlane.

Shutdown (SIGTERM, SIGINT, or :meth:`BackgroundServer.stop`) stops accepting connections, lets
the requests in flight finish (up to ``drain_seconds``), unloads the models and returns, so the
process exits 0. ``python -m mlp_serve REPO [--http-port ...]`` runs it like ``mlp serve``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

from mlp_obs.log import get_logger
from mlp_obs.metrics import CollectorRegistry, InferenceMetrics, register_system_metrics
from mlp_serve.config import ServeConfig
from mlp_serve.dataplane import DataPlane
from mlp_serve.grpc.server import GrpcServer, create_grpc_server, stop_grpc_server
from mlp_serve.http_limits import uvicorn_options
from mlp_serve.rest.app import create_app
from mlp_serve.tls import check_tls, tls_enabled

if TYPE_CHECKING:
    from mlp_serve.workers.worker import WorkerHooks

log = get_logger(__name__)

DRAIN_SECONDS = 30.0


@dataclass(frozen=True)
class BoundPorts:
    host: str
    http_port: int
    grpc_port: int
    tls: bool = False  # both front ends speak TLS (serve.tls)

    @property
    def http_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def describe(self) -> str:
        return f"mlp serve: REST on {self.http_url}, gRPC on {self.grpc_address}"


class _Uvicorn(uvicorn.Server):
    # This module owns the signals: uvicorn's handlers would re-raise SIGTERM after its own
    # shutdown, killing the process before the gRPC side and the data plane have drained.
    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


async def serve_async(
    repository: str | os.PathLike[str],
    config: ServeConfig,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[BoundPorts], None] | None = None,
    drain_seconds: float = DRAIN_SECONDS,
    handle_signals: bool = True,
    freeze_gc: bool = False,
    worker: WorkerHooks | None = None,
) -> None:
    """Serve until ``stop`` is set (or SIGTERM/SIGINT when ``handle_signals``), then drain.

    ``freeze_gc`` (for a process that only serves, as ``mlp serve`` is) takes everything loaded
    at startup out of the garbage collector's sight: see :func:`freeze_startup_objects`.
    ``worker``: this process is one of ``mlp serve --workers N`` (:mod:`mlp_serve.workers`).
    """
    stop = stop or asyncio.Event()
    check_tls(config.tls)  # a bad certificate or key stops us before any model loads
    registry = CollectorRegistry()
    if worker is None:
        register_system_metrics(registry)
    # A worker's /metrics shows every worker's families (prometheus_client's multiprocess mode).
    exposed = registry if worker is None else worker.metrics_registry()
    dataplane = DataPlane(repository, config, InferenceMetrics(registry))
    rest: _Uvicorn | None = None
    rest_task: asyncio.Task | None = None
    grpc_server: GrpcServer | None = None
    try:
        await dataplane.start()
        if worker is not None:
            await worker.attach(dataplane, stop)
        reuse_port = worker is not None and worker.reuse_port
        sock = _bind(config.host, config.http_port, reuse_port=reuse_port)
        rest = _Uvicorn(
            uvicorn.Config(
                create_app(dataplane, config, exposed),
                log_config=None,  # mlp_obs owns logging; uvicorn's records go through it
                access_log=False,  # RequestContext logs each request with its id
                lifespan="off",
                timeout_graceful_shutdown=int(drain_seconds),
                server_header=False,
                **uvicorn_options(config),  # header, keep-alive and concurrency limits; TLS
            )
        )
        grpc_server = await _start_grpc(dataplane, config, reuse_port=reuse_port)
        rest_task = asyncio.get_running_loop().create_task(rest.serve(sockets=[sock]))
        while not rest.started:
            if rest_task.done():
                await rest_task  # startup failed: surface why
                raise RuntimeError("the REST server stopped during startup")
            await asyncio.sleep(0.01)
        ports = BoundPorts(
            config.host, sock.getsockname()[1], grpc_server.mlp_port, tls=tls_enabled(config.tls)
        )
        if freeze_gc:
            freeze_startup_objects()
        print(ports.describe(), flush=True)
        log.info("serving", rest=ports.http_url, grpc=ports.grpc_address)
        if on_ready is not None:
            on_ready(ports)
        with _signals(stop, handle_signals):
            stopped = asyncio.get_running_loop().create_task(stop.wait())
            await asyncio.wait({stopped, rest_task}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
    finally:
        # Stop accepting on both front ends, let requests in flight finish, then unload.
        log.info("shutting down: finishing requests in flight", requests=dataplane.in_flight)
        if rest is not None:
            rest.should_exit = True
        await asyncio.gather(
            _wait(rest_task),
            _stop_grpc(grpc_server, drain_seconds),
            dataplane.stop(drain_seconds),
        )
        if worker is not None:
            await worker.close()
        log.info("server stopped")


def serve(
    repository: str | os.PathLike[str], config: ServeConfig, drain_seconds: float = DRAIN_SECONDS
) -> int:
    """Run the server in this process until SIGTERM or SIGINT; returns the exit status."""
    asyncio.run(serve_async(repository, config, drain_seconds=drain_seconds, freeze_gc=True))
    return 0


def freeze_startup_objects() -> None:
    """Move every object alive now (modules, apps, loaded models) to the collector's permanent
    generation, which its collections skip.

    They live as long as the process. Left in view, each full collection walks all of them: under
    load that paused every request for about 45 ms a few times a second (REST at concurrency 16
    on one core: p99 48 ms, p90 6 ms; frozen: p99 10 ms, and 13% more requests/s).
    """
    gc.collect()
    gc.freeze()
    log.debug("startup objects frozen", objects=gc.get_freeze_count())


class BackgroundServer:
    """The server in a thread of this process (tests, notebooks): a context manager.

    ``with BackgroundServer(repo, config) as server: server.ports.http_url``
    """

    def __init__(
        self,
        repository: str | os.PathLike[str],
        config: ServeConfig,
        drain_seconds: float = 5.0,
        timeout: float = 60.0,
    ) -> None:
        self.repository = Path(repository)
        self.config = config
        self.drain_seconds = drain_seconds
        self.timeout = timeout
        self.ports: BoundPorts | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mlp-serve", daemon=True)

    @property
    def http_url(self) -> str:
        assert self.ports is not None
        return self.ports.http_url

    def start(self) -> BackgroundServer:
        self._thread.start()
        if not self._ready.wait(self.timeout) or self.ports is None:
            raise RuntimeError(f"the server did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(self.timeout)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await serve_async(
                self.repository,
                self.config,
                stop=self._stop,
                on_ready=self._on_ready,
                drain_seconds=self.drain_seconds,
                handle_signals=False,
            )

        try:
            asyncio.run(main())
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            self._ready.set()

    def _on_ready(self, ports: BoundPorts) -> None:
        self.ports = ports
        self._ready.set()


def _bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on accepted sockets whose proto says
    # TCP, and with proto 0 Nagle's algorithm would hold each response's body behind its headers
    # until the client's delayed ACK (40 ms per request on Linux).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # one of several workers on this port: the kernel spreads the connections
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        from mlp_core.errors import ServingError

        raise ServingError(
            f"cannot listen on {host}:{port}: {exc.strerror}",
            hint="Pick another --http-port (0 picks a free one) or stop what uses it.",
        ) from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def _start_grpc(
    dataplane: DataPlane, config: ServeConfig, *, reuse_port: bool = False
) -> GrpcServer:
    server = create_grpc_server(dataplane, config, reuse_port=reuse_port)
    await server.start()
    return server


async def _stop_grpc(server: GrpcServer | None, grace: float) -> None:
    if server is not None:  # None: startup failed before the gRPC server was made
        await stop_grpc_server(server, grace)


async def _wait(task: asyncio.Task | None) -> None:
    if task is None:
        return
    try:
        await task
    except Exception:
        log.exception("the REST server failed")


@contextlib.contextmanager
def _signals(stop: asyncio.Event, enabled: bool) -> Any:
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    handled = (signal.SIGTERM, signal.SIGINT)
    for sig in handled:
        with contextlib.suppress(NotImplementedError):  # Windows' loops lack signal handlers
            loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in handled:
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(sig)
