"""The tensors a model takes and gives, described for an exporter (ONNX) and a server.

Input names are the batch keys of :mod:`mlp_core.batch` (``numeric``, ``categorical``,
``image``), so a server can map request fields to model inputs without a table. Dtypes are
strings (``"float32"``, ``"int64"``) so a spec can go into a JSON manifest unchanged. The batch
axis is always axis 0, written ``-1`` in shapes and named ``"batch"`` in ``dynamic_axes``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

BATCH_AXIS_NAME = "batch"
DYNAMIC = -1

_DTYPES = {"float32": torch.float32, "int64": torch.int64}


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor: ``shape`` has ``-1`` for the batch axis and fixed sizes elsewhere."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {self.dtype!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    def concrete_shape(self, batch_size: int) -> tuple[int, ...]:
        return tuple(batch_size if size == DYNAMIC else size for size in self.shape)


@dataclass(frozen=True)
class InputSpec:
    """Inputs in the order ``forward`` takes them, and outputs in the order it returns them."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """The ``dynamic_axes`` argument of ``torch.onnx.export``: every batch axis is free."""
        return {
            spec.name: {
                axis: BATCH_AXIS_NAME for axis, size in enumerate(spec.shape) if size == DYNAMIC
            }
            for spec in (*self.inputs, *self.outputs)
        }

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, for a bundle manifest."""
        return {**asdict(self), "dynamic_axes": self.dynamic_axes}
