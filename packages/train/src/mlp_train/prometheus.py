"""Training metrics where Prometheus reads them: ``training.prometheus`` in a config.

``port`` serves ``http://address:port/metrics`` while the run trains (Prometheus scrapes it);
``textfile`` rewrites a file in the text exposition format after every epoch and at the end (the
node_exporter textfile collector reads it, and it outlives the process). Either or both. The
families are :class:`mlp_obs.metrics.TrainingMetrics`' ``mlp_training_*``, labelled by run, in
mlp-obs' registry (created once per process, so runs trained one after another in a process
share them), filled by :class:`~mlp_train.callbacks.MetricsLogger`, plus the process's own
``process_*`` families.

Every rank of a distributed run exposes its own series, each sample labelled ``rank`` (the global
rank; ``"0"`` in a single-process run), as a Prometheus user expects of per-worker metrics: a slow
rank shows in its own step rate. Ranks on one node cannot share a port, so rank ``r`` serves
``port + LOCAL_RANK`` (a fixed range per node, which a scrape config or a pod can list; port 0
lets each rank pick any free port), and writes ``textfile`` with ``.rank<r>`` before its suffix
when ``r`` > 0. The machine-wide families (``mlp_system_*``, ``mlp_gpu_*``: CPU, memory and every
GPU NVML sees) come from local rank 0 alone, one copy per node rather than one per rank.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlp_core.files import atomic_write_bytes
from mlp_obs.metrics import (
    REGISTRY,
    CollectorRegistry,
    ConstantLabels,
    TrainingMetrics,
    register_system_metrics,
    render,
    start_metrics_server,
)
from mlp_train.callbacks.base import Callback
from mlp_train.config import PrometheusConfig
from mlp_train.distributed import DistributedContext

if TYPE_CHECKING:
    from mlp_train.trainer import Trainer

log = logging.getLogger(__name__)

RANK_LABEL = "rank"


def exposition_registry(dist: DistributedContext) -> CollectorRegistry:
    """What one rank exposes: the training families, its process, and (local rank 0) the
    machine; every sample labelled with the rank."""
    own = register_system_metrics(CollectorRegistry(), machine=dist.local_rank == 0)
    exposed = CollectorRegistry(auto_describe=False)
    labels = {RANK_LABEL: str(dist.rank)}
    exposed.register(ConstantLabels(REGISTRY, labels))
    exposed.register(ConstantLabels(own, labels))
    return exposed


def rank_port(port: int, dist: DistributedContext) -> int:
    """The port rank ``dist`` serves on: ``port + LOCAL_RANK``, or any free one for 0."""
    if port == 0:
        return 0
    chosen = port + dist.local_rank
    if chosen > 65535:
        raise ValueError(
            f"training.prometheus.port {port} + local rank {dist.local_rank} is past 65535"
        )
    return chosen


def rank_textfile(path: Path, dist: DistributedContext) -> Path:
    """Rank 0 writes ``path``; rank r > 0 ``<stem>.rank<r><suffix>`` beside it (a textfile
    collector reading ``*.prom`` in the folder then reads every rank's file)."""
    if dist.rank == 0:
        return path
    return path.with_name(f"{path.stem}.rank{dist.rank}{path.suffix}")


class PrometheusExposition(Callback):
    def __init__(self, config: PrometheusConfig, dist: DistributedContext | None = None) -> None:
        self.config = config
        self.dist = dist if dist is not None else DistributedContext()
        self.metrics = training_metrics()
        self.registry = exposition_registry(self.dist)
        self.port: int | None = None
        self.textfile = (
            rank_textfile(config.textfile, self.dist) if config.textfile is not None else None
        )
        self._server: Any = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.config.port is not None:
            self._server, self.port = start_metrics_server(
                rank_port(self.config.port, self.dist), self.config.address, self.registry
            )
            log.info(
                "training metrics of rank %d at http://%s:%d/metrics",
                self.dist.rank,
                self.config.address,
                self.port,
            )

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        self._write_textfile()

    def on_fit_end(self, trainer: Trainer) -> None:
        self._close()

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        self._write_textfile()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _write_textfile(self) -> None:
        if self.textfile is not None:
            atomic_write_bytes(self.textfile, render(self.registry)[0])


@functools.cache
def training_metrics() -> TrainingMetrics:
    """The process's training metric families (a family registers once per registry)."""
    return TrainingMetrics()
