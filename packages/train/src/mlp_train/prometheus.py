"""Training metrics where Prometheus reads them: ``training.prometheus`` in a config.

``port`` serves ``http://address:port/metrics`` while the run trains (Prometheus scrapes it);
``textfile`` rewrites a file in the text exposition format after every epoch and at the end (the
node_exporter textfile collector reads it, and it outlives the process). Either or both. The
families are :class:`mlp_obs.metrics.TrainingMetrics`' ``mlp_training_*``, labelled by run, in
mlp-obs' registry (created once per process, so runs trained one after another in a process
share them), filled by :class:`~mlp_train.callbacks.MetricsLogger`. Rank 0 alone exposes them.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

from mlp_core.files import atomic_write_bytes
from mlp_obs.metrics import TrainingMetrics, render, start_metrics_server
from mlp_train.callbacks.base import Callback
from mlp_train.config import PrometheusConfig

if TYPE_CHECKING:
    from mlp_train.trainer import Trainer

log = logging.getLogger(__name__)


class PrometheusExposition(Callback):
    def __init__(self, config: PrometheusConfig) -> None:
        self.config = config
        self.metrics = training_metrics()
        self.port: int | None = None
        self._server: Any = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.config.port is not None:
            self._server, self.port = start_metrics_server(self.config.port, self.config.address)
            log.info("training metrics at http://%s:%d/metrics", self.config.address, self.port)

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
        if self.config.textfile is not None:
            atomic_write_bytes(self.config.textfile, render()[0])


@functools.cache
def training_metrics() -> TrainingMetrics:
    """The process's training metric families (a family registers once per registry)."""
    return TrainingMetrics()
