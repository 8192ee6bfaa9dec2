"""One ONNX model on onnxruntime: the session, its signature, and a warm-up run.

Providers are tried in the configured order (CUDA, then CPU). onnxruntime-gpu lists CUDA as
available even where its libraries or a GPU are missing and then quietly falls back to CPU, so
the provider reported everywhere is the one the session actually uses, read back from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from mlp_core.tensors import TensorSpec, to_numpy_dtype
from mlp_obs.log import get_logger
from mlp_serve.config import ServeConfig
from mlp_serve.datatypes import from_onnx_type
from mlp_serve.errors import BundleError

CPU = "CPUExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def select_providers(wanted: Sequence[str]) -> list[str]:
    """The wanted providers this onnxruntime build has, in order; CPU always last resort.

    TensorRT is used only when listed explicitly (it compiles engines for minutes on first use).
    """
    available = set(ort.get_available_providers())
    chosen = [p for p in wanted if p in available]
    if CPU not in chosen:
        chosen.append(CPU)
    if any(p != CPU for p in chosen):
        _preload_cuda_libraries()
    return chosen


log = get_logger(__name__)
_preloaded = False


def _preload_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries that pip installed (``mlp-serve[cuda]``, or torch's).

    onnxruntime-gpu does not search site-packages for them by itself; without this the CUDA
    provider fails to load and the session silently falls back to the CPU.
    """
    global _preloaded
    if _preloaded or not hasattr(ort, "preload_dlls"):
        return
    _preloaded = True
    try:
        ort.preload_dlls()
    except Exception as exc:  # a machine without the libraries: the CPU fallback is reported
        log.warning("could not preload the CUDA libraries", reason=str(exc))


def session_options(config: ServeConfig) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = _OPTIMIZATION[config.graph_optimization_level]
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = config.inter_op_threads
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

    def warmup(self, dims: dict[str, list[int]] | None = None) -> None:
        """Run a batch of one made of zeros (empty strings for BYTES).

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


def load_runtime(path: str | Path, config: ServeConfig) -> ModelRuntime:
    """Create the session for ``path``; an unreadable or invalid model is a BundleError."""
    try:
        session = ort.InferenceSession(
            str(path), session_options(config), providers=select_providers(config.providers)
        )
        inputs = _signature(session.get_inputs())
        outputs = _signature(session.get_outputs())
    except Exception as exc:  # onnxruntime raises its own untyped errors for a bad file
        raise BundleError(f"{path}: onnxruntime cannot load it: {_first_line(exc)}") from exc
    return ModelRuntime(session, inputs, outputs, session.get_providers()[0])


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
