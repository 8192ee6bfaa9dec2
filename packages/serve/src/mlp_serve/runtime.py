"""One ONNX model on onnxruntime: the session, its signature, and a warm-up run.

Providers are asked for in the configured order (CUDA, then CPU), but only those that can start
on this machine (:mod:`mlp_obs.accelerators`): onnxruntime-gpu lists CUDA as available even with
no GPU or no CUDA libraries, and asking for it then prints a coloured error before it falls back
to the CPU. Each model logs one line naming the provider its session really uses, read back from
the session, and why it is not CUDA when CUDA was wanted. ``serve.device`` decides what happens
when a GPU provider cannot start: ``auto`` falls back to the CPU, ``cuda`` refuses the model.

Each model's intra-op threads and spinning come from :mod:`mlp_serve.threads` (the CPUs this
process may use and the model's size, unless set), and one more line per model says what it got.
The warm-up times a few runs: :attr:`ModelRuntime.run_seconds` tells the data plane whether a
run is quick enough to do without a thread hop.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Before onnxruntime: importing it sets ORT_DISABLE_TELEMETRY=1 (unless the user set it),
# which onnxruntime reads only when it is imported.
import mlp_obs.ort_telemetry  # noqa: F401

# isort: split
import onnxruntime as ort

from mlp_core.errors import ServingError
from mlp_core.tensors import TensorSpec, to_numpy_dtype
from mlp_obs.accelerators import CPU, CUDA, GPU_PROVIDERS, TENSORRT, provider_status
from mlp_obs.log import get_logger
from mlp_serve.config import ServeConfig
from mlp_serve.datatypes import from_onnx_type
from mlp_serve.errors import BundleError
from mlp_serve.threads import ThreadChoice, choose_threads, cpu_budget, model_bytes

__all__ = ["CPU", "CUDA", "TENSORRT", "ModelRuntime", "ProviderChoice", "load_runtime"]

_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

log = get_logger(__name__)


@dataclass(frozen=True)
class ProviderChoice:
    """The providers a session is asked for, the one preferred, and why any were left out."""

    providers: list[str]
    preferred: str = CPU
    left_out: dict[str, str] = field(default_factory=dict)


def select_providers(config: ServeConfig) -> ProviderChoice:
    """The configured providers that can start here, in order; the CPU always last resort.

    TensorRT is used only when listed explicitly (it compiles engines for minutes on first use).
    With ``device: cuda`` a model that would get no GPU provider is refused: a clear error.
    """
    if config.device == "cpu":
        return ProviderChoice([CPU])
    wanted = list(config.providers) or [CPU]
    if config.device == "cuda":
        wanted = [p for p in wanted if p in GPU_PROVIDERS] or [CUDA]
    chosen: list[str] = []
    left_out: dict[str, str] = {}
    for provider in wanted:
        status = provider_status(ort, provider)
        if status.ok:
            chosen.append(provider)
        else:
            left_out[provider] = status.detail
    if config.device == "cuda" and not chosen:
        reasons = "; ".join(f"{p}: {why}" for p, why in left_out.items())
        raise ServingError(
            f"serve.device is cuda, but no GPU provider can start here ({reasons})",
            hint="Serve on a machine with an NVIDIA GPU and `pip install 'mlp-serve[cuda]'`, "
            "or set serve.device: auto to fall back to the CPU.",
        )
    if CPU not in chosen:
        chosen.append(CPU)
    return ProviderChoice(chosen, wanted[0], left_out)


def session_options(config: ServeConfig, threads: ThreadChoice) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = _OPTIMIZATION[config.graph_optimization_level]
    options.intra_op_num_threads = threads.intra_op_threads
    options.inter_op_num_threads = config.inter_op_threads
    spin = "1" if threads.spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    # Warnings about unused initializers and the like are for model authors, not server logs.
    options.log_severity_level = 3
    return options


def _dim(value: Any) -> int:
    # onnxruntime reports a symbolic dimension as its name ("batch") and an unknown one as None.
    return value if isinstance(value, int) and value >= 0 else -1


def _signature(args: Sequence[Any]) -> list[TensorSpec]:
    return [
        TensorSpec(
            name=arg.name,
            datatype=from_onnx_type(arg.type),
            shape=tuple(_dim(d) for d in arg.shape),
        )
        for arg in args
    ]


@dataclass
class ModelRuntime:
    """A loaded session with its inputs and outputs in KServe terms."""

    session: ort.InferenceSession
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    provider: str
    threads: ThreadChoice | None = None
    # The median time of a warm-up run (a batch of one); None before warmup() ran.
    run_seconds: float | None = None

    @property
    def batchable(self) -> bool:
        """Every input and output has a variable first axis: requests can be stacked on it."""
        tensors = [*self.inputs, *self.outputs]
        return bool(tensors) and all(t.shape and t.shape[0] == -1 for t in tensors)

    def run(
        self, feeds: dict[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        names = list(output_names) if output_names else [o.name for o in self.outputs]
        results = self.session.run(names, _to_onnxruntime(feeds))
        # Dense outputs only: the servable types (datatypes.from_onnx_type) are all tensors.
        return {name: np.asarray(result) for name, result in zip(names, results)}

    def warmup(self, dims: dict[str, list[int]] | None = None, runs: int = 5) -> None:
        """Run a batch of one made of zeros (empty strings for BYTES), ``runs`` times, and keep
        the median time of the runs after the first (which allocates) in :attr:`run_seconds`.

        ``dims`` gives the shape to use for an input whose non-batch axes are variable (an
        image's height and width); other variable axes are 1.
        """
        feeds = {}
        for tensor in self.inputs:
            shape = (dims or {}).get(tensor.name) or [1 if d < 0 else d for d in tensor.shape]
            if tensor.datatype == "BYTES":
                feeds[tensor.name] = np.full(shape, "", dtype=object)
            else:
                feeds[tensor.name] = np.zeros(shape, dtype=to_numpy_dtype(tensor.datatype))
        self.run(feeds)
        times = []
        for _ in range(max(0, runs - 1)):
            started = time.perf_counter()
            self.run(feeds)
            times.append(time.perf_counter() - started)
            if times[-1] > 0.05:  # a slow model: its first timed run says enough
                break
        if times:
            self.run_seconds = statistics.median(times)


def load_runtime(path: str | Path, config: ServeConfig) -> ModelRuntime:
    """Create the session for ``path``; an unreadable or invalid model is a BundleError.

    With ``device: cuda`` a model that cannot run on a GPU provider is a ServingError.
    """
    choice = select_providers(config)
    threads = choose_threads(
        cpu_budget(), model_bytes(Path(path)), config.intra_op_threads, config.intra_op_spinning
    )
    try:
        session = ort.InferenceSession(
            str(path), session_options(config, threads), providers=choice.providers
        )
        inputs = _signature(session.get_inputs())
        outputs = _signature(session.get_outputs())
    except Exception as exc:  # onnxruntime raises its own untyped errors for a bad file
        raise BundleError(f"{path}: onnxruntime cannot load it: {_first_line(exc)}") from exc
    provider = session.get_providers()[0]
    _report_provider(Path(path), config, choice, provider)
    model = _model_label(Path(path))
    log.info(
        f"{model}: onnxruntime {threads.describe()}",
        model=model,
        intra_op_threads=threads.intra_op_threads,
        spinning=threads.spinning,
    )
    return ModelRuntime(session, inputs, outputs, provider, threads)


def _report_provider(path: Path, config: ServeConfig, choice: ProviderChoice, got: str) -> None:
    """One line per model: the provider it got, and why not the first one wanted."""
    model = _model_label(path)
    first = choice.providers[0]
    if got != first:
        # The probe said the provider could start, and onnxruntime still fell back (a driver
        # too old for its CUDA, out of memory): its own message is just above this line.
        message = f"{model}: runs on {got}; onnxruntime could not start {first} (see above)"
        if config.device == "cuda":
            raise ServingError(
                f"serve.device is cuda, but {message}",
                hint="Check the GPU with `mlp doctor` and nvidia-smi, "
                "or set serve.device: auto to fall back to the CPU.",
            )
        log.warning(message, model=model, provider=got)
        return
    wanted = choice.preferred
    reason = choice.left_out.get(wanted)
    if reason is None:
        why = " (serve.device: cpu)" if config.device == "cpu" else ""
        log.info(f"{model}: runs on {got}{why}", model=model, provider=got)
        return
    message = f"{model}: runs on {got}, not {wanted}: {reason}"
    # Only a provider list someone wrote down deserves a warning; the default just tries CUDA.
    explicit = "providers" in config.model_fields_set
    (log.warning if explicit else log.info)(message, model=model, provider=got)


def _model_label(path: Path) -> str:
    # REPO/<model>/<version>/model.onnx reads as "<model>/<version>"; any other file by its name.
    folder = path.parent
    return f"{folder.parent.name}/{folder.name}" if folder.name.isdigit() else path.name


def _to_onnxruntime(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # onnxruntime's string tensors take str; given bytes it would feed their repr ("b'a'").
    # Validation already checked that BYTES data decodes as UTF-8.
    converted = {}
    for name, array in feeds.items():
        if array.dtype == object:
            array = np.vectorize(_as_str, otypes=[object])(array) if array.size else array
        converted[name] = array
    return converted


def _as_str(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
