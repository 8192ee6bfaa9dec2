"""Whether onnxruntime's GPU execution providers can start on this machine, and if not, why.

onnxruntime-gpu lists CUDA (and TensorRT) among its available providers on every machine: they
are compiled in. Whether one can start depends on a visible GPU and on its shared libraries
loading (CUDA, cuBLAS, cuDNN, the driver's libcuda). Asking for one that cannot start makes
onnxruntime print a coloured error and fall back to the CPU, so `mlp serve` asks this module
first and `mlp doctor` reports the same answer.

The onnxruntime module is passed in rather than imported: mlp-obs does not depend on it, and
both callers have already imported it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from mlp_obs.gpu import GpuUnavailable, read_gpus

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
# The providers that need an NVIDIA GPU, and the stem of the shared library each is built as.
GPU_PROVIDERS = {CUDA: "cuda", TENSORRT: "tensorrt"}
# CUDA_VISIBLE_DEVICES values that hide every GPU from CUDA.
_HIDDEN = {"", "-1", "none", "nodevfiles"}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """Yes or no, and the reason in words a user can act on."""

    ok: bool
    detail: str


def gpu_presence() -> Answer:
    """Whether an NVIDIA GPU is visible to this process: NVML first, the device files without it."""
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip().lower() in _HIDDEN:
        return Answer(False, f"CUDA_VISIBLE_DEVICES={hidden!r} hides every GPU")
    try:
        _, gpus = read_gpus()
    except GpuUnavailable as exc:
        why_not = str(exc)
    else:
        if gpus:
            return Answer(True, ", ".join(gpu.name for gpu in gpus))
        return Answer(False, "NVML lists no GPU")
    # mlp-serve alone does not install nvidia-ml-py: on Linux the driver's device files tell.
    if platform.system() == "Linux":
        devices = sorted(Path("/dev").glob("nvidia[0-9]*"))
        if devices:
            return Answer(True, f"{len(devices)} NVIDIA device(s) in /dev (NVML: {why_not})")
        return Answer(False, f"no NVIDIA GPU found ({why_not}; no /dev/nvidia* device)")
    return Answer(False, f"no NVIDIA GPU found ({why_not})")


def provider_status(ort: ModuleType, provider: str) -> Answer:
    """Whether ``provider`` can start in this process, given the imported onnxruntime module.

    CPU always can; a provider this build lacks cannot; a GPU provider needs a visible GPU and
    its libraries loading; any other compiled-in provider is taken at its word.
    """
    if provider == CPU:
        return Answer(True, "always available")
    if provider not in ort.get_available_providers():
        return Answer(False, f"not in this onnxruntime build ({_build_name(ort)})")
    if provider not in GPU_PROVIDERS:
        return Answer(True, "compiled in")
    gpu = gpu_presence()
    if not gpu.ok:
        return Answer(False, gpu.detail)
    libraries = _libraries_load(ort, GPU_PROVIDERS[provider])
    if not libraries.ok:
        return libraries
    return Answer(True, f"GPU: {gpu.detail}")


@functools.cache
def _libraries_load(ort: ModuleType, stem: str) -> Answer:
    """Load the provider's shared library as onnxruntime would; a missing dependency says which.

    Loading is what onnxruntime does at the first session anyway, so nothing extra stays loaded
    on a machine where the provider works.
    """
    capi = Path(ort.__file__ or ".").parent / "capi"
    windows = platform.system() == "Windows"
    name = f"onnxruntime_providers_{stem}.dll" if windows else f"libonnxruntime_providers_{stem}.so"
    shared = "onnxruntime_providers_shared.dll" if windows else "libonnxruntime_providers_shared.so"
    if not (capi / name).is_file():
        return Answer(False, f"{name} is not in this onnxruntime build")
    _preload_pip_libraries(ort)
    try:
        # The provider library takes its host functions from the shared bridge, loaded global.
        ctypes.CDLL(str(capi / shared), mode=getattr(ctypes, "RTLD_GLOBAL", 0))
        ctypes.CDLL(str(capi / name))
    except OSError as exc:
        return Answer(False, f"its libraries do not load: {_missing_library(exc)}")
    return Answer(True, "libraries load")


def _preload_pip_libraries(ort: ModuleType) -> None:
    """Load the CUDA and cuDNN libraries pip installed (``mlp-serve[cuda]``, or torch's).

    onnxruntime-gpu does not search site-packages for them by itself. ``preload_dlls`` prints
    each library it cannot find to stdout: that goes to the debug log instead, since the
    caller reports the outcome in one line.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            preload()
    except Exception as exc:  # the library probe that follows says what is missing
        log.debug("onnxruntime.preload_dlls failed: %s", exc)
    if printed.getvalue().strip():
        log.debug("onnxruntime.preload_dlls: %s", " | ".join(printed.getvalue().split("\n")))


def _missing_library(exc: OSError) -> str:
    # "libcublasLt.so.13: cannot open shared object file: No such file or directory"
    text = str(exc).strip()
    missing, found, _ = text.partition(": cannot open shared object file")
    return f"{missing} not found" if found else text


def _build_name(ort: ModuleType) -> str:
    package = "onnxruntime-gpu" if CUDA in ort.get_available_providers() else "onnxruntime"
    return f"{package} {getattr(ort, '__version__', '?')}"
