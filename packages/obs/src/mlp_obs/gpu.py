"""NVIDIA GPUs as NVML sees them (nvidia-ml-py, the `gpu` extra): one reader for the metrics
collector and for `mlp doctor`.

NVML is started once per process, at the first read, and ``pynvml`` is imported only then.
A machine without the package, the driver or a GPU raises :class:`GpuUnavailable`; one GPU that
fails to answer (fallen off the bus, in reset) is left out while the others are reported.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
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
    utilization_ratio: float | None  # None where the GPU (or a MIG slice) does not report it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_lock = threading.Lock()
_nvml: Any = None
_unavailable: GpuUnavailable | None = None


def nvml() -> Any:
    """The started ``pynvml`` module; raises :class:`GpuUnavailable` (and remembers why)."""
    global _nvml, _unavailable
    with _lock:
        if _nvml is None and _unavailable is None:
            try:
                module = importlib.import_module("pynvml")
            except ImportError:
                _unavailable = GpuUnavailable(
                    "nvidia-ml-py is not installed (pip install 'mlp-obs[gpu]')"
                )
            else:
                try:
                    module.nvmlInit()
                    _nvml = module
                except module.NVMLError as exc:
                    _unavailable = GpuUnavailable(f"NVML cannot start (no NVIDIA driver?): {exc}")
        if _unavailable is not None:
            raise _unavailable
        return _nvml


def read_gpus() -> tuple[str, list[GpuInfo]]:
    """The driver version and one :class:`GpuInfo` per GPU that answers."""
    lib = nvml()
    try:
        driver = _text(lib.nvmlSystemGetDriverVersion())
        count = lib.nvmlDeviceGetCount()
    except lib.NVMLError as exc:
        raise GpuUnavailable(f"NVML cannot list GPUs: {exc}") from exc
    gpus = []
    for index in range(count):
        try:
            handle = lib.nvmlDeviceGetHandleByIndex(index)
            name = _text(lib.nvmlDeviceGetName(handle))
            used, total = _memory(lib, handle)
        except lib.NVMLError:
            continue
        utilization = None
        with contextlib.suppress(lib.NVMLError):
            utilization = lib.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
        gpus.append(GpuInfo(index, name, used, total, utilization))
    return driver, gpus


def _memory(lib: Any, handle: Any) -> tuple[int, int]:
    # The v2 call leaves out memory the driver reserves, so "used" matches nvidia-smi; older
    # drivers and nvidia-ml-py releases only have v1.
    try:
        info = lib.nvmlDeviceGetMemoryInfo(handle, version=lib.nvmlMemory_v2)
    except (AttributeError, TypeError, lib.NVMLError):
        info = lib.nvmlDeviceGetMemoryInfo(handle)
    return int(info.used), int(info.total)


def _text(value: str | bytes) -> str:
    # Older nvidia-ml-py releases return bytes, newer ones str.
    return value.decode() if isinstance(value, bytes) else value
