"""NVIDIA GPUs as NVML sees them (nvidia-ml-py, the `gpu` extra), for metrics and `mlp doctor`."""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass
from typing import Any


class GpuUnavailable(Exception):
    """NVML cannot be used here: the package is missing or there is no NVIDIA driver."""


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    memory_used_bytes: int
    memory_total_bytes: int
    utilization_ratio: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_gpus() -> tuple[str, list[GpuInfo]]:
    """The driver version and one :class:`GpuInfo` per GPU; raises :class:`GpuUnavailable`."""
    try:
        nvml = importlib.import_module("pynvml")
    except ImportError as exc:
        raise GpuUnavailable("nvidia-ml-py is not installed (pip install 'mlp-obs[gpu]')") from exc
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        raise GpuUnavailable(f"NVML cannot start (no NVIDIA driver?): {exc}") from exc
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            utilization = nvml.nvmlDeviceGetUtilizationRates(handle)
            gpus.append(
                GpuInfo(
                    index=index,
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    memory_used_bytes=int(memory.used),
                    memory_total_bytes=int(memory.total),
                    utilization_ratio=utilization.gpu / 100.0,
                )
            )
        return driver, gpus
    finally:
        nvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    # Older nvidia-ml-py releases return bytes, newer ones str.
    return value.decode() if isinstance(value, bytes) else value
