"""A run's fitted tabular preprocessing, read for export, and the float64 reference of it.

The document is :class:`mlp_core.tabular_spec.TabularPreprocessing` (its module states the
semantics); a run folder's ``preprocessing.json`` wraps it as ``{"type": "tabular",
"preprocessor": {...}}``. :func:`reference_inputs` is the torch side of the export parity
check: it follows those semantics in float64 numpy, independently of the ONNX graph that
:mod:`mlp_serve.export.graph` builds from the same numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlp_core.tabular_spec import TabularPreprocessing
from mlp_serve.errors import BundleError

_HINT = "Export with the mlp-serve version that matches the mlp-data that trained it."


def read_preprocessing(preprocessing: dict[str, Any], *, source: str) -> TabularPreprocessing:
    """The checked document of a run's ``preprocessing.json`` (``{"type": "tabular", ...}``)."""
    document = preprocessing.get("preprocessor")
    if preprocessing.get("type") != "tabular" or not isinstance(document, dict):
        raise BundleError(f"{source}: not a tabular preprocessing record (type 'tabular')")
    return TabularPreprocessing.parse(document, error=BundleError, hint=_HINT, source=source)


def reference_inputs(
    document: TabularPreprocessing, numeric: np.ndarray, categorical: np.ndarray
) -> dict[str, np.ndarray]:
    """The network inputs for raw rows: ``numeric`` [B, n] (NaN = missing) and ``categorical``
    [B, k] strings ("" = missing), computed in float64 as mlp-data computes them."""
    rows = numeric.shape[0] if document.numeric else categorical.shape[0]
    parts = []
    if document.numeric:
        values = np.asarray(numeric, dtype=np.float64)
        for j, col in enumerate(document.numeric):
            column = np.where(np.isnan(values[:, j]), col.fill_value, values[:, j])
            parts.append(((column - col.offset) / col.scale).astype(np.float32)[:, None])
    slots = [
        np.array([col.slot_of(str(v)) for v in categorical[:, j]], dtype=np.int64)
        for j, col in enumerate(document.categorical)
    ]
    out: dict[str, np.ndarray] = {}
    if document.encoding == "onehot":
        for col, index in zip(document.categorical, slots):
            onehot = np.zeros((rows, col.slots), dtype=np.float32)
            onehot[np.arange(rows), index] = 1.0
            parts.append(onehot)
    elif slots:
        out["categorical"] = np.stack(slots, axis=1)
    out["numeric"] = (
        np.concatenate(parts, axis=1).astype(np.float32)
        if parts
        else np.zeros((rows, 0), dtype=np.float32)
    )
    return out
