"""Shared by the observability tests (test_prometheus_rules.py, test_dashboards_live.py): where
the assets are, and which metric names mlp really exposes."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import ProcessCollector

from mlp_obs.metrics import (
    CollectorRegistry,
    GpuCollector,
    InferenceMetrics,
    SystemCollector,
    TrainingMetrics,
)

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
PROMETHEUS_BIN = Path("/usr/bin/prometheus")
PROMTOOL_BIN = Path("/usr/bin/promtool")

# Names a PromQL expression may use: mlp's families, prometheus_client's process_* ones, and the
# `up` series Prometheus writes for every target.
_METRIC = re.compile(r"\b((?:mlp|process)_[a-z0-9_]+)\b|\b(up)\s*\{")


def defined_sample_names() -> set[str]:
    """Every sample name the families of mlp_obs.metrics expose (from their definitions: the
    GPU families are listed even where NVML sees no GPU)."""
    registry = CollectorRegistry()
    InferenceMetrics(registry)
    TrainingMetrics(registry)
    families = [*registry.collect(), *SystemCollector().describe(), *GpuCollector().describe()]
    families += ProcessCollector(registry=None).collect()
    names = {"up"}
    for family in families:
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects."""
    return {plain or up for plain, up in _METRIC.findall(expr)}
