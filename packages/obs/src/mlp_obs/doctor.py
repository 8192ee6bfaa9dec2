"""`mlp doctor`: what this environment has, as health checks anyone can extend.

Other packages add checks through the entry-point group ``mlp.doctor`` (a name and a callable
returning a :class:`~mlp_obs.health.CheckResult`). Everything heavy (torch, onnxruntime, NVML,
MLflow) is imported inside its check, so the command starts fast and reports a broken library
as a failed check instead of crashing.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType

from mlp_core.cli import Command
from mlp_core.versions import mlp_packages
from mlp_obs.health import CheckResult, HealthChecks

checks = HealthChecks(group="mlp.doctor")


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@checks.register("python")
def python_check() -> CheckResult:
    ok = sys.version_info >= (3, 10)
    detail = f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})"
    return CheckResult(
        ok,
        detail if ok else f"{detail}: mlp needs Python >= 3.10",
        {"version": platform.python_version(), "executable": sys.executable},
    )


@checks.register("platform")
def platform_check() -> CheckResult:
    data = {
        "system": platform.system(),
        "release": platform.release(),
        "machine": platform.machine(),
    }
    return CheckResult(True, f"{data['system']} {data['release']} {data['machine']}", data)


@checks.register("packages")
def packages_check() -> CheckResult:
    packages = mlp_packages()
    detail = ", ".join(f"{name} {ver}" for name, ver in packages.items())
    return CheckResult("mlp-core" in packages, detail or "no mlp package found", packages)


@checks.register("torch", critical=False)
def torch_check() -> CheckResult:
    if not _installed("torch"):
        return CheckResult(True, "not installed (training needs mlp-train)", {"installed": False})
    torch = importlib.import_module("torch")
    data: dict = {"installed": True, "version": torch.__version__, "cuda_build": torch.version.cuda}
    data["cuda_available"] = torch.cuda.is_available()
    devices = []
    if data["cuda_available"]:
        devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    data["devices"] = devices
    where = f"CUDA {torch.version.cuda}: {', '.join(devices)}" if devices else "CPU only"
    return CheckResult(True, f"{torch.__version__}, {where}", data)


@checks.register("onnxruntime", critical=False)
def onnxruntime_check() -> CheckResult:
    if not _installed("onnxruntime"):
        return CheckResult(True, "not installed (serving needs mlp-serve)", {"installed": False})
    from mlp_obs.ort_telemetry import import_onnxruntime

    ort = import_onnxruntime()  # telemetry off unless the user set ORT_DISABLE_TELEMETRY
    return CheckResult(True, *describe_providers(ort))


def describe_providers(ort: ModuleType) -> tuple[str, dict]:
    """Compiled-in providers told apart from usable ones, and what serving will use.

    onnxruntime-gpu lists CUDA and TensorRT on every machine; whether they can start here is
    :func:`mlp_obs.accelerators.provider_status`, the same answer `mlp serve` acts on.
    """
    from mlp_obs.accelerators import CPU, CUDA, GPU_PROVIDERS, gpu_presence, provider_status

    installed = ort.get_available_providers()
    status = {name: provider_status(ort, name) for name in installed}
    usable = [name for name in installed if status[name].ok]
    gpu_providers = [_short(name) for name in GPU_PROVIDERS if name in installed]
    notes = []
    gpu = gpu_presence()
    if gpu_providers and not gpu.ok:
        # The gpu check beside this one says why no GPU was found.
        plural = "s" if len(gpu_providers) > 1 else ""
        notes.append(f"{' and '.join(gpu_providers)} provider{plural} installed; no GPU")
    else:
        for name in GPU_PROVIDERS:
            if name in installed:
                state = (
                    "usable" if status[name].ok else f"installed, not usable: {status[name].detail}"
                )
                notes.append(f"{_short(name)} {state}")
    # `mlp serve` asks for CUDA, then the CPU (TensorRT only when listed): the first that starts.
    serving = CUDA if CUDA in usable else CPU
    where = "CPU" if serving == CPU else "the GPU (CUDA)"
    detail = f"{ort.__version__}; " + "; ".join(notes) + (": " if notes else "")
    detail += f"serving will use {where}"
    data = {
        "installed": True,
        "version": ort.__version__,
        "providers": installed,
        "usable": usable,
        "unusable": {name: status[name].detail for name in installed if not status[name].ok},
        "serving_provider": serving,
    }
    return detail, data


def _short(provider: str) -> str:
    return {"TensorrtExecutionProvider": "TensorRT"}.get(
        provider, provider.removesuffix("ExecutionProvider")
    )


@checks.register("gpu", critical=False)
def gpu_check() -> CheckResult:
    from mlp_obs.gpu import GpuUnavailable, read_gpus

    try:
        driver, gpus = read_gpus()
    except GpuUnavailable as exc:
        return CheckResult(True, f"none: {exc}", {"gpus": []})
    names = ", ".join(f"{g.index}: {g.name} ({g.memory_total_bytes / 2**30:.0f} GiB)" for g in gpus)
    data = {"driver": driver, "gpus": [g.as_dict() for g in gpus]}
    return CheckResult(True, f"driver {driver}; {names or 'no GPU'}", data)


@checks.register("mlflow", critical=False)
def mlflow_check() -> CheckResult:
    from mlp_obs.tracking import tracking_uri

    uri = tracking_uri()
    try:
        installed = version("mlflow-skinny")
    except PackageNotFoundError:
        installed = None
    where = (
        f"mlflow-skinny {installed}"
        if installed
        else "MLflow not installed: runs go to tracking.jsonl"
    )
    return CheckResult(
        True, f"tracking URI {uri} ({where})", {"tracking_uri": uri, "version": installed}
    )


def run(args: argparse.Namespace) -> int:
    report = checks.run()
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        width = max(map(len, report.results))
        for name, result in report.results.items():
            mark = "ok  " if result.ok else ("FAIL" if result.critical else "warn")
            print(f"{mark}  {name:<{width}}  {result.detail}")
    return 0 if report.ok else 1


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


command = Command(
    help="check the installation: packages, torch, CUDA, onnxruntime, GPUs, MLflow",
    configure=_configure,
    run=run,
)
