"""The people-facing side of the server: JSON rows in, labelled predictions out.

Rows carry raw features by column name. The bundle's feature schema says which columns feed the
FP32 input ``numeric`` ([B, n], NaN for a missing value) and which the BYTES input
``categorical`` ([B, k], "" for a missing value), in order. A key left out of a row is a missing
value; a value of the wrong type is refused naming its row and column. The model's outputs
become ``{"label", "probabilities"}`` (classification, with the manifest's class labels) or
``{"value"}`` (regression).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from mlp_serve.bundle import FeatureSchema, Manifest
from mlp_serve.errors import InvalidInput
from mlp_serve.types import InferRequest, InferResponse, RequestedOutput, Tensor

NUMERIC_INPUT = "numeric"
CATEGORICAL_INPUT = "categorical"
PROBABILITIES = "probabilities"
LABEL = "label"
PREDICTIONS = "predictions"


def feature_schema_of(model: str, manifest: Manifest | None, hint: str) -> FeatureSchema:
    """The bundle's feature schema, or an :class:`InvalidInput`: without one it takes no rows.

    ``hint`` says how this caller sends tensors instead (the REST route, the Predictor).
    """
    if manifest is None or manifest.feature_schema is None:
        raise InvalidInput(
            f"model {model!r} has no feature schema in its manifest, so it takes no rows",
            hint=hint,
        )
    return manifest.feature_schema


def predict_rows_request(
    schema: FeatureSchema, rows: Any, input_names: list[str], output_names: list[str]
) -> InferRequest:
    """What /predict and the Predictor run for ``rows``: their inputs, the outputs to label."""
    request = rows_request(schema, rows, input_names)
    request.outputs = predictions_outputs(output_names)
    return request


def rows_request(schema: FeatureSchema, rows: Any, input_names: list[str]) -> InferRequest:
    """The inference request for ``rows`` (a list of ``{column: value}`` objects)."""
    if not isinstance(rows, list) or not rows:
        raise InvalidInput('expected {"rows": [{column: value, ...}, ...]} with at least one row')
    known = set(schema.numeric) | set(schema.categorical)
    numeric = np.full((len(rows), len(schema.numeric)), np.nan, dtype=np.float32)
    categorical = np.full((len(rows), len(schema.categorical)), b"", dtype=object)
    for r, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InvalidInput(f"row {r}: expected an object of column: value")
        unknown = sorted(set(row) - known)
        if unknown:
            raise InvalidInput(
                f"row {r}: unknown column(s) {', '.join(map(repr, unknown))}; the model takes "
                f"numeric {schema.numeric} and categorical {schema.categorical}"
            )
        for c, column in enumerate(schema.numeric):
            numeric[r, c] = _number(row.get(column), r, column)
        for c, column in enumerate(schema.categorical):
            categorical[r, c] = _category(row.get(column), r, column)
    inputs = []
    if NUMERIC_INPUT in input_names:
        inputs.append(Tensor(NUMERIC_INPUT, "FP32", list(numeric.shape), numeric))
    if CATEGORICAL_INPUT in input_names:
        inputs.append(Tensor(CATEGORICAL_INPUT, "BYTES", list(categorical.shape), categorical))
    return InferRequest(inputs=inputs)


def _number(value: Any, row: int, column: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(
            f"row {row}, column {column!r}: expected a number or null, got {value!r}"
        )
    return float(value)


def _category(value: Any, row: int, column: str) -> bytes:
    if value is None:
        return b""
    # Integers and booleans are accepted as their text, which is how a CSV reader sees them.
    if isinstance(value, (str, int)) and not isinstance(value, float):
        return str(value).encode("utf-8")
    raise InvalidInput(f"row {row}, column {column!r}: expected a string or null, got {value!r}")


def predictions_outputs(output_names: list[str]) -> list[RequestedOutput]:
    """The outputs /predict asks the model for."""
    wanted = [n for n in (PROBABILITIES, LABEL, PREDICTIONS) if n in output_names]
    return [RequestedOutput(name) for name in wanted] or [RequestedOutput(output_names[0])]


def format_predictions(response: InferResponse, class_labels: Sequence[str] | None) -> list[dict]:
    """One ``{"label", "probabilities"}`` or ``{"value"}`` per row of ``response``."""
    outputs = {t.name: np.asarray(t.data) for t in response.outputs}
    labels = list(class_labels) if class_labels else None
    if PROBABILITIES in outputs:
        probabilities = outputs[PROBABILITIES].reshape(outputs[PROBABILITIES].shape[0], -1)
        names = labels if labels and len(labels) == probabilities.shape[1] else None
        names = names or [str(i) for i in range(probabilities.shape[1])]
        given = outputs.get(LABEL)
        results = []
        for i, row in enumerate(probabilities):
            label = _text(given.reshape(-1)[i]) if given is not None else names[int(row.argmax())]
            results.append(
                {"label": label, "probabilities": {n: float(p) for n, p in zip(names, row)}}
            )
        return results
    values = next(iter(outputs.values()))
    values = values.reshape(values.shape[0], -1) if values.ndim else values.reshape(1, 1)
    return [{"value": _plain(row)} for row in values]


def _plain(row: np.ndarray) -> Any:
    items = [_text(v) if isinstance(v, bytes) else v.item() for v in row]
    return items[0] if len(items) == 1 else items


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
