"""A snapshot of the machine a run is using: CPU, memory, and each NVIDIA GPU when NVML works.

The trackers record it next to a run's metrics when system metrics are asked for, and names
follow MLflow's ``system/...`` convention so its UI groups them.
"""

from __future__ import annotations

import psutil

from mlp_obs.gpu import GpuUnavailable, read_gpus


def system_snapshot() -> dict[str, float]:
    memory = psutil.virtual_memory()
    snapshot = {
        "system/cpu_utilization_percentage": psutil.cpu_percent(interval=None),
        "system/system_memory_usage_megabytes": (memory.total - memory.available) / 2**20,
        "system/system_memory_usage_percentage": memory.percent,
        "system/process_memory_rss_megabytes": psutil.Process().memory_info().rss / 2**20,
    }
    try:
        _, gpus = read_gpus()
    except GpuUnavailable:
        return snapshot
    for gpu in gpus:
        snapshot[f"system/gpu_{gpu.index}_memory_usage_megabytes"] = gpu.memory_used_bytes / 2**20
        if gpu.utilization_ratio is not None:
            snapshot[f"system/gpu_{gpu.index}_utilization_percentage"] = gpu.utilization_ratio * 100
    return snapshot
