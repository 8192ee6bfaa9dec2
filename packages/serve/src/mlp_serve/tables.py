"""Arrow tables of raw features in, columns of predictions out: :mod:`mlp_serve.rows`, by column.

A Parquet or CSV file of millions of rows is read in record batches; turning each row into a
dict (what ``/v1/.../predict`` takes) would cost more than the model. This builds the same
``numeric`` and ``categorical`` tensors from whole columns at once, with the rows conversion's
rules: a missing value (null, or NaN in a float column) is NaN or ``""``; a category may be
text or an integer (as its text), never a float; a number may not be a boolean or text. A
column the model does not take is left out; a schema column the table lacks is missing in every
row. Predictions come back as columns: ``label`` and one ``probability_<class>`` per class
(classification), or ``value`` (regression), row for row what :func:`rows.format_predictions`
gives.

pyarrow comes with ``mlp-serve[parquet]``; this module is imported only when a table is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlp_serve.bundle import FeatureSchema
from mlp_serve.errors import InvalidInput
from mlp_serve.rows import (
    CATEGORICAL_INPUT,
    LABEL,
    NUMERIC_INPUT,
    PROBABILITIES,
    predictions_outputs,
)
from mlp_serve.types import InferRequest, InferResponse, Tensor

PROBABILITY_PREFIX = "probability_"
VALUE = "value"


def table_request(
    schema: FeatureSchema,
    table: pa.RecordBatch | pa.Table,
    input_names: list[str],
    output_names: list[str],
) -> InferRequest:
    """The inference request for every row of ``table``, and the outputs to label."""
    rows = table.num_rows
    if rows == 0:
        raise InvalidInput("nothing to predict: the table has no rows")
    present = set(table.column_names)
    numeric = np.full((rows, len(schema.numeric)), np.nan, dtype=np.float32)
    for c, column in enumerate(schema.numeric):
        if column in present:
            numeric[:, c] = _numbers(table.column(column), column)
    categorical = np.full((rows, len(schema.categorical)), "", dtype=object)
    for c, column in enumerate(schema.categorical):
        if column in present:
            categorical[:, c] = _categories(table.column(column), column)
    inputs = []
    if NUMERIC_INPUT in input_names:
        inputs.append(Tensor(NUMERIC_INPUT, "FP32", list(numeric.shape), numeric))
    if CATEGORICAL_INPUT in input_names:
        inputs.append(Tensor(CATEGORICAL_INPUT, "BYTES", list(categorical.shape), categorical))
    return InferRequest(inputs=inputs, outputs=predictions_outputs(output_names))


def _numbers(values: pa.Array | pa.ChunkedArray, column: str) -> np.ndarray:
    kind = values.type
    if pa.types.is_null(kind):
        return np.full(len(values), np.nan, dtype=np.float32)
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)):
        raise InvalidInput(f"column {column!r}: expected numbers, got {kind} values")
    as_float = pc.cast(values, pa.float64())
    return np.asarray(pc.fill_null(as_float, np.nan).to_numpy(zero_copy_only=False))


def _categories(values: pa.Array | pa.ChunkedArray, column: str) -> np.ndarray:
    kind = values.type
    if pa.types.is_dictionary(kind):  # pandas' categoricals
        values = pc.cast(values, kind.value_type)
        kind = values.type
    if pa.types.is_null(kind):
        return np.full(len(values), "", dtype=object)
    if pa.types.is_boolean(kind):
        # The rows conversion takes a boolean as its Python text, as a CSV reader sees it.
        truth = pc.fill_null(values, False).to_numpy(zero_copy_only=False)
        text = np.where(truth, "True", "False").astype(object)
        text[values.is_null().to_numpy(zero_copy_only=False)] = ""
        return text
    if pa.types.is_integer(kind):
        values = pc.cast(values, pa.string())
    elif not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise InvalidInput(f"column {column!r}: expected text or integers, got {kind} values")
    # str, not the bytes the wire codecs make: Arrow's strings are valid UTF-8 already, and
    # validation and onnxruntime's feed then decode nothing, element by element.
    return pc.fill_null(values, "").to_numpy(zero_copy_only=False)


def prediction_columns(
    response: InferResponse, class_labels: Sequence[str] | None
) -> dict[str, Any]:
    """The predictions of ``response`` as named columns (numpy arrays or lists), row order
    kept: :func:`mlp_serve.rows.format_predictions` by column."""
    outputs = {t.name: np.asarray(t.data) for t in response.outputs}
    if PROBABILITIES in outputs:
        probabilities = outputs[PROBABILITIES]
        probabilities = probabilities.reshape(probabilities.shape[0], -1)
        labels = list(class_labels) if class_labels else None
        names = labels if labels and len(labels) == probabilities.shape[1] else None
        names = names or [str(i) for i in range(probabilities.shape[1])]
        given = outputs.get(LABEL)
        if given is not None:
            label = [_text(v) for v in given.reshape(-1)]
        else:
            label = np.asarray(names, dtype=object)[probabilities.argmax(axis=1)]
        columns: dict[str, Any] = {LABEL: label}
        for index, name in enumerate(names):
            columns[PROBABILITY_PREFIX + name] = probabilities[:, index]
        return columns
    values = next(iter(outputs.values()))
    values = values.reshape(values.shape[0], -1) if values.ndim else values.reshape(1, 1)
    if values.dtype == object:
        values = np.vectorize(_text, otypes=[object])(values)
    if values.shape[1] == 1:
        return {VALUE: values[:, 0]}
    return {VALUE: list(values)}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
