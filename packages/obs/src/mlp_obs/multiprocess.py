"""Metrics of several processes that serve as one (``mlp serve --workers N``).

prometheus_client's multiprocess mode: the supervisor sets :data:`MULTIPROCESS_ENV` to a fresh
folder in its workers' environment, so that their counters, histograms and gauges live in
memory-mapped files there (the choice is made when prometheus_client is first imported, hence an
environment variable). Any worker can then render every worker's families, summed
(:func:`multiprocess_registry`): ``/metrics`` tells the same truth whichever worker answers.
Gauges say how to combine the workers' values with their ``multiprocess_mode``.

What multiprocess mode cannot sum, each process's own ``process_*`` families, is exposed per
worker with a ``pid`` label (:class:`ProcessesCollector`). When a worker dies, the supervisor
calls :func:`mark_process_dead`: its live gauges (in flight, models loaded) leave the sums, while
its counts stay in them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client import multiprocess as _multiprocess
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from mlp_obs.metrics import GpuCollector, SystemCollector

# The variable prometheus_client reads at import time (the lower-case spelling is deprecated).
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> Path | None:
    """The folder of this process's multiprocess metrics, or None in single-process mode."""
    value = os.environ.get(MULTIPROCESS_ENV)
    return Path(value) if value else None


def multiprocess_registry(
    path: str | os.PathLike[str], pids: Callable[[], Iterable[int]]
) -> CollectorRegistry:
    """What one worker's ``/metrics`` renders: every worker's families from ``path`` (summed or
    combined by each gauge's mode), the machine's and the GPUs' once, and the ``process_*``
    families of each live worker that ``pids`` lists."""
    registry = CollectorRegistry()
    _multiprocess.MultiProcessCollector(registry, path=str(path))
    registry.register(SystemCollector())
    registry.register(GpuCollector())
    registry.register(ProcessesCollector(pids))
    return registry


def mark_process_dead(pid: int, path: str | os.PathLike[str]) -> None:
    """Drop a dead worker's live gauges from the sums (its counters stay counted)."""
    _multiprocess.mark_process_dead(pid, str(path))


class ProcessesCollector(Collector):
    """prometheus_client's ``process_*`` families (CPU seconds, resident memory, open files) of
    each process ``pids`` lists, one series per process labelled ``pid``; read from ``/proc`` at
    each scrape, so a process that has gone yields nothing."""

    def __init__(self, pids: Callable[[], Iterable[int]]) -> None:
        self.pids = pids
        self._collectors: dict[int, ProcessCollector] = {}

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        live = sorted(set(self.pids()))
        # Forget the collectors of processes no longer listed: pids are reused.
        self._collectors = {pid: self._collectors.get(pid) or _collector(pid) for pid in live}
        for pid, collector in self._collectors.items():
            for family in collector.collect():
                merged = families.get(family.name)
                if merged is None:
                    merged = Metric(family.name, family.documentation, family.type, family.unit)
                    families[family.name] = merged
                merged.samples.extend(
                    sample._replace(labels={**sample.labels, "pid": str(pid)})
                    for sample in family.samples
                )
        return list(families.values())


def _collector(pid: int) -> ProcessCollector:
    return ProcessCollector(pid=lambda: pid, registry=None)
