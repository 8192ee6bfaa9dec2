"""The supervisor of ``mlp serve --workers N``: it serves nothing itself.

It reserves the REST and gRPC ports (:mod:`.ports`), makes the shared folder (:mod:`.shared_state`,
also prometheus_client's multiprocess folder, named to the workers by
``PROMETHEUS_MULTIPROC_DIR``), starts N workers and prints the usual startup line once all are
ready. A worker that exits is restarted after a backoff (0.5 s, doubling to 30 s; back to 0.5 s
once a worker has served a minute), with a warning that says how it ended; its live gauges leave
the metrics' sums. A worker that fails before the server first became ready stops the whole
server instead: its siblings would fail the same way.

SIGTERM or SIGINT: every worker gets SIGTERM and drains as the single-process server does (health
NOT_SERVING, requests in flight finish, up to the drain time), then the supervisor removes the
shared folder and exits 0 (1 if a worker failed or had to be killed).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from mlp_core.errors import ConfigError
from mlp_obs.log import get_logger
from mlp_obs.multiprocess import MULTIPROCESS_ENV, mark_process_dead
from mlp_serve.config import ServeConfig
from mlp_serve.threads import WORKER_CPUS_ENV, cpu_budget
from mlp_serve.workers.ports import reserve_port
from mlp_serve.workers.shared_state import Launch, SharedState

log = get_logger(__name__)

POLL_SECONDS = 0.1  # how often exits and readiness are looked at (idle: under 1% of a CPU)
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0
HEALTHY_SECONDS = 60.0  # a worker ready this long resets the backoff
KILL_AFTER_DRAIN_SECONDS = 10.0  # beyond the drain time, before SIGKILL


def usable_cpus() -> int:
    """CPUs this process may use: its affinity, capped by its cgroup's CPU quota (containers)."""
    return cpu_budget().usable


def resolve_workers(workers: int | str) -> int:
    """``serve.workers`` as a number of processes: 0 or ``"auto"`` is :func:`usable_cpus`."""
    if workers in (0, "auto"):
        return usable_cpus()
    if not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"serve.workers: expected a count >= 0 or 'auto'; given {workers!r}")
    return workers


def serve_workers(
    repository: str | os.PathLike[str],
    config: ServeConfig,
    workers: int,
    *,
    drain_seconds: float,
    log_level: str | None = None,
) -> int:
    """Serve with ``workers`` processes until SIGTERM or SIGINT; returns the exit status."""
    if not sys.platform.startswith("linux"):
        raise ConfigError(
            "serve.workers > 1 needs Linux: elsewhere SO_REUSEPORT does not spread connections",
            hint="Run several single-process servers behind a load balancer instead.",
        )
    http = reserve_port(config.host, config.http_port, "REST")
    try:
        grpc = reserve_port(config.host, config.grpc_port, "gRPC")
    except BaseException:
        http.close()
        raise
    root = Path(tempfile.mkdtemp(prefix="mlp-serve-workers-"))
    try:
        changes = {
            "http_port": http.getsockname()[1],
            "grpc_port": grpc.getsockname()[1],
            "workers": 1,
        }
        worker_config = config.model_copy(update=changes)
        state = SharedState(root)
        state.write_launch(
            Launch(
                repository=str(Path(repository).resolve()),
                config=worker_config.model_dump(mode="json"),
                drain_seconds=drain_seconds,
                log_level=log_level,
            )
        )
        supervisor = Supervisor(state, worker_config, workers, drain_seconds)
        return supervisor.run()
    finally:
        http.close()
        grpc.close()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class _Slot:
    index: int
    process: subprocess.Popen[bytes] | None = None
    ready_at: float | None = None
    failures: int = 0  # consecutive exits without a healthy run: the backoff's exponent
    restart_at: float | None = None


class Supervisor:
    def __init__(
        self, state: SharedState, config: ServeConfig, workers: int, drain_seconds: float
    ) -> None:
        self.state = state
        self.config = config
        self.drain_seconds = drain_seconds
        self.slots = [_Slot(i) for i in range(workers)]
        self._stop = threading.Event()
        # Each worker sizes its onnxruntime pools (serve.intra_op_threads: 0) for its share of
        # the CPUs, not for the whole machine (mlp_serve.threads).
        self.worker_cpus = max(1, usable_cpus() // workers)
        self._env = {
            **os.environ,
            MULTIPROCESS_ENV: str(state.root),
            WORKER_CPUS_ENV: str(self.worker_cpus),
        }

    def run(self) -> int:
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            log.info(
                "starting workers",
                workers=len(self.slots),
                cpus_per_worker=self.worker_cpus,
            )
            for slot in self.slots:
                self._start(slot)
            if not self._supervise():
                self._shutdown()
                return 1
            return self._shutdown()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop.set()

    def _supervise(self) -> bool:
        """Until a stop signal; False when a worker failed before the server was ready."""
        announced = False
        while not self._stop.wait(POLL_SECONDS):
            now = time.monotonic()
            ready = {pid for pid, w in self.state.workers().items() if w.ready}
            for slot in self.slots:
                process = slot.process
                if process is not None and process.poll() is not None:
                    if not announced:
                        self._forget(process.pid)
                        slot.process = None
                        log.error(
                            "a worker failed while the server started (its log above says why)",
                            worker=slot.index,
                            status=_status(process.returncode),
                        )
                        return False
                    self._on_exit(slot, process, now)
                elif process is not None and slot.ready_at is None and process.pid in ready:
                    slot.ready_at = now
                    if announced:
                        log.info("worker ready again", worker=slot.index, pid=process.pid)
                if slot.process is None and slot.restart_at is not None and now >= slot.restart_at:
                    self._start(slot)
            if not announced and all(s.ready_at is not None for s in self.slots):
                announced = True
                host = self.config.host
                scheme = "https" if self.config.tls.cert_file else "http"
                print(
                    f"mlp serve: REST on {scheme}://{host}:{self.config.http_port}, gRPC on "
                    f"{host}:{self.config.grpc_port} ({len(self.slots)} workers)",
                    flush=True,
                )
                log.info("serving", workers=[s.process.pid for s in self.slots if s.process])
        return True

    def _start(self, slot: _Slot) -> None:
        command = [sys.executable, "-m", "mlp_serve.workers.worker", str(self.state.root)]
        slot.process = subprocess.Popen(
            [*command, str(slot.index)],
            env=self._env,
            stdin=subprocess.DEVNULL,
            # The startup line on standard output is the supervisor's; the workers' own go to
            # standard error with their logs.
            stdout=sys.stderr,
            # Out of the terminal's process group: Ctrl-C reaches the supervisor only, which
            # passes one SIGTERM on. A second signal during the drain would kill the worker.
            start_new_session=True,
        )
        slot.ready_at = None
        slot.restart_at = None
        log.debug("worker started", worker=slot.index, pid=slot.process.pid)

    def _on_exit(self, slot: _Slot, process: subprocess.Popen[bytes], now: float) -> None:
        self._forget(process.pid)
        if slot.ready_at is not None and now - slot.ready_at >= HEALTHY_SECONDS:
            slot.failures = 0
        delay = min(MAX_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * 2**slot.failures)
        slot.failures += 1
        slot.process = None
        slot.restart_at = now + delay
        log.warning(
            "worker exited: restarting it",
            worker=slot.index,
            pid=process.pid,
            status=_status(process.returncode),
            restart_in_seconds=delay,
        )

    def _forget(self, pid: int) -> None:
        mark_process_dead(pid, self.state.root)
        self.state.remove_worker(pid)

    def _shutdown(self) -> int:
        running = [s.process for s in self.slots if s.process is not None]
        log.info("stopping workers: they finish the requests in flight", workers=len(running))
        for process in running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.drain_seconds + KILL_AFTER_DRAIN_SECONDS
        clean = True
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("a worker did not stop in time: killed", pid=process.pid)
                process.kill()
                process.wait()
                clean = False
            # A worker stopped by SIGTERM before it handles signals (still loading) is fine too.
            if process.returncode not in (0, -signal.SIGTERM):
                log.error("a worker failed", pid=process.pid, status=_status(process.returncode))
                clean = False
            self._forget(process.pid)
        log.info("server stopped")
        return 0 if clean else 1


def _status(code: int | None) -> str:
    if code is None:
        return "running"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"
