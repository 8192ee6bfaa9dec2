"""Tabular preprocessing fitted on the training split and saved as plain JSON.

:class:`TabularPreprocessor` imputes, scales and encodes a table (pandas) into the arrays a model
reads (keys of :mod:`mlp_core.batch`). What it fits is the typed document of
:mod:`mlp_core.tabular_spec` (:class:`~mlp_core.tabular_spec.TabularPreprocessing`): its column
records, slot layout and JSON are defined there once, for this fitter, for an exporter that
folds them into an ONNX graph and for a server that reproduces them; never a pickle.

Output layout
    ``numeric``      float32 [n, len(outputs.numeric)]: the numeric columns, each as
                     ``(value - offset) / scale`` after imputation, then (``encoding: onehot``)
                     one 0/1 column per slot of every categorical column.
    ``categorical``  int64 [n, len(outputs.categorical)] (``encoding: index``): one slot index per
                     categorical column, for an embedding table of ``cardinality`` rows.
    ``target``       int64 [n] class index (classification) or float32 [n] (regression); only
                     when the frame holds the target column.
A key is left out when it would have no columns. Category slots (missing, unknown, then the
known categories in sorted order) and the JSON format are documented in
:mod:`mlp_core.tabular_spec`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, ValidationError

from mlp_core import batch
from mlp_core.errors import DataError
from mlp_core.files import atomic_write_text
from mlp_core.tabular_spec import (
    UNKNOWN_INDEX,
    CategoricalColumn,
    NumericColumn,
    PreprocessingOptions,
    TabularPreprocessing,
    TabularTask,
    category_key,
)
from mlp_data.tabular.files import numeric_with_bad_values

Record = TypeVar("Record", bound=BaseModel)


def sorted_categories(values: Any) -> list[str]:
    """Distinct non-missing category keys in a stable order: numerically if all are numbers."""
    keys = {k for k in map(category_key, pd.Series(values).unique()) if k is not None}
    try:
        return sorted(keys, key=float)
    except ValueError:
        return sorted(keys)


class TabularPreprocessor:
    """Imputation, scaling and categorical encoding, fitted on the training split only."""

    def __init__(
        self,
        numeric: list[str],
        categorical: list[str],
        *,
        target: str | None = None,
        task: TabularTask = "classification",
        options: PreprocessingOptions | None = None,
    ) -> None:
        overlap = set(numeric) & set(categorical)
        if overlap:
            raise DataError(f"columns {sorted(overlap)} are both numeric and categorical")
        if target is not None and target in {*numeric, *categorical}:
            raise DataError(f"target column {target!r} is also listed as a feature")
        self.numeric_names = list(numeric)
        self.categorical_names = list(categorical)
        self.target = target
        self.task: TabularTask = task
        self.options = options or PreprocessingOptions()
        self.numeric: list[NumericColumn] = []
        self.categorical: list[CategoricalColumn] = []
        self.target_classes: list[str] | None = None
        self._class_index: dict[str, int] = {}
        self.fitted = False

    # -- fitting ---------------------------------------------------------------------------

    def fit(self, frame: pd.DataFrame, *, classes: list[str] | None = None) -> TabularPreprocessor:
        """Fit on the training rows; ``classes`` fixes the label set (else: sorted train labels)."""
        _require_columns(frame, [*self.numeric_names, *self.categorical_names], "fit")
        self.numeric = [self._fit_numeric(name, frame[name]) for name in self.numeric_names]
        self.categorical = [
            self._fit_categorical(name, frame[name]) for name in self.categorical_names
        ]
        if self.target is not None and self.task == "classification":
            if classes is None:
                _require_columns(frame, [self.target], "fit")
                classes = sorted_categories(frame[self.target])
            self._set_classes(list(classes))
        self.fitted = True
        return self

    def _fit_numeric(self, name: str, column: pd.Series) -> NumericColumn:
        values = _numeric_values(column, name).to_numpy(dtype=np.float64, na_value=np.nan)
        observed = values[~np.isnan(values)]
        opts = self.options
        if opts.numeric_impute == "constant" or observed.size == 0:
            fill = float(opts.numeric_fill_value)
        elif opts.numeric_impute == "mean":
            fill = float(observed.mean())
        elif opts.numeric_impute == "median":
            fill = float(np.median(observed))
        else:  # most_frequent; ties go to the smallest value so refits agree
            uniques, counts = np.unique(observed, return_counts=True)
            fill = float(uniques[np.argmax(counts)])
        offset, scale = 0.0, 1.0
        if opts.scaling == "standard" and observed.size:
            offset, scale = float(observed.mean()), float(observed.std())
        elif opts.scaling == "minmax" and observed.size:
            offset, scale = float(observed.min()), float(observed.max() - observed.min())
        # A constant column would divide by zero; it carries no signal, so map it to 0.
        if not np.isfinite(scale) or scale == 0.0:
            scale = 1.0
        return _record(NumericColumn, name=name, fill_value=fill, offset=offset, scale=scale)

    def _fit_categorical(self, name: str, column: pd.Series) -> CategoricalColumn:
        opts = self.options
        categories = set(sorted_categories(column))
        if opts.categorical_impute == "constant":
            categories.add(str(opts.categorical_fill_value))
        ordered = sorted_categories(list(categories))
        encoded = _record(CategoricalColumn, name=name, categories=tuple(ordered))
        fill: str | None = None
        if opts.categorical_impute == "constant":
            fill = str(opts.categorical_fill_value)
        elif opts.categorical_impute == "most_frequent" and ordered:
            codes, uniques = pd.factorize(column, use_na_sentinel=True)
            counts: dict[str, int] = {}
            for value, count in zip(uniques, np.bincount(codes[codes >= 0])):
                key = category_key(value)
                if key is not None:
                    counts[key] = counts.get(key, 0) + int(count)
            # Ties go to the first category in sorted order, so two fits agree.
            fill = min(counts, key=lambda key: (-counts[key], ordered.index(key)))
        if fill is None:
            return encoded
        return _record(
            CategoricalColumn,
            name=name,
            categories=encoded.categories,
            fill_index=encoded.index[fill],
        )

    def _set_classes(self, classes: Sequence[str]) -> None:
        self.target_classes = list(classes)
        self._class_index = {c: i for i, c in enumerate(classes)}

    # -- transforming ----------------------------------------------------------------------

    def transform(self, frame: pd.DataFrame, *, source: str = "data") -> dict[str, np.ndarray]:
        """Arrays keyed by :mod:`mlp_core.batch`; ``target`` only when the frame holds it."""
        if not self.fitted:
            raise DataError("TabularPreprocessor.transform called before fit or load")
        _require_columns(frame, [*self.numeric_names, *self.categorical_names], source)
        rows = len(frame)
        out: dict[str, np.ndarray] = {}
        parts = [self._transform_numeric(col, frame[col.name], source) for col in self.numeric]
        slots = [self._slots(col, frame[col.name]) for col in self.categorical]
        if self.options.encoding == "onehot":
            for col, index in zip(self.categorical, slots):
                onehot = np.zeros((rows, col.slots), dtype=np.float32)
                onehot[np.arange(rows), index] = 1.0
                parts.append(onehot)
        elif slots:
            out[batch.CATEGORICAL] = np.stack(slots, axis=1).astype(np.int64, copy=False)
        if parts:
            out[batch.NUMERIC] = np.column_stack(parts).astype(np.float32, copy=False)
        if self.target is not None and self.target in frame.columns:
            out[batch.TARGET] = self.encode_target(frame[self.target], source=source)
        return out

    def _transform_numeric(self, col: NumericColumn, column: pd.Series, source: str) -> np.ndarray:
        values = _numeric_values(column, col.name, source).to_numpy(np.float64, na_value=np.nan)
        values = np.where(np.isnan(values), col.fill_value, values)
        return ((values - col.offset) / col.scale).astype(np.float32)

    def _slots(self, col: CategoricalColumn, column: pd.Series) -> np.ndarray:
        # Encode each distinct value once: the cost is per category, not per row.
        codes, uniques = pd.factorize(column, use_na_sentinel=True)
        lookup = [col.fill_index] * (len(uniques) + 1)  # code -1 (missing) indexes the last
        for code, value in enumerate(uniques):
            key = category_key(value)
            if key is not None:
                lookup[code] = col.index.get(key, UNKNOWN_INDEX)
        return np.asarray(lookup, dtype=np.int64)[codes]

    def encode_target(self, column: pd.Series, *, source: str = "data") -> np.ndarray:
        name = self.target
        missing = column.isna().to_numpy()
        if missing.any():
            row = int(np.flatnonzero(missing)[0])
            raise DataError(
                f"{source}: row {_row_label(column, row)}, column {name!r}: the target is "
                f"missing ({int(missing.sum())} rows in all)",
                hint="Drop rows without a target, or set validation.on_invalid: drop.",
            )
        if self.task == "regression":
            return _numeric_values(column, str(name), source).to_numpy(np.float32)
        codes, uniques = pd.factorize(column)
        lookup = []
        for value in uniques:
            key = category_key(value)
            if key is None or key not in self._class_index:
                row = int(np.flatnonzero(codes == len(lookup))[0])
                raise DataError(
                    f"{source}: row {_row_label(column, row)}, column {name!r}: class {key!r} "
                    f"is not one of the fitted classes {self.target_classes}"
                )
            lookup.append(self._class_index[key])
        return np.asarray(lookup, dtype=np.int64)[codes]

    # -- what a model and an exporter read -------------------------------------------------

    def document(self) -> TabularPreprocessing:
        """Everything fitted, as the typed document that exporters and servers read."""
        if not self.fitted:
            raise DataError("TabularPreprocessor must be fitted first")
        return TabularPreprocessing(
            options=self.options,
            task=self.task,
            target=self.target,
            target_classes=tuple(self.target_classes) if self.target_classes is not None else None,
            numeric=tuple(self.numeric),
            categorical=tuple(self.categorical),
        )

    @property
    def output_columns(self) -> dict[str, list[str]]:
        return self.document().output_columns

    def model_inputs(self) -> dict[str, Any]:
        document = self.document()
        return {
            "num_numeric": document.network_width,
            "categorical_cardinalities": document.cardinalities,
        }

    # -- JSON ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return self.document().to_dict()

    def to_json(self) -> str:
        # allow_nan=False: a NaN would not be valid JSON for other readers (a server, onnx tools).
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def save(self, path: str | os.PathLike[str]) -> Path:
        return atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def from_document(cls, document: TabularPreprocessing) -> TabularPreprocessor:
        """A fitted preprocessor that applies ``document``."""
        prep = cls(
            document.numeric_names,
            document.categorical_names,
            target=document.target,
            task=document.task,
            options=document.options,
        )
        prep.numeric = list(document.numeric)
        prep.categorical = list(document.categorical)
        if document.target_classes is not None:
            prep._set_classes(document.target_classes)
        prep.fitted = True
        return prep

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], *, source: str = "preprocessor document"
    ) -> TabularPreprocessor:
        return cls.from_document(TabularPreprocessing.parse(data, error=DataError, source=source))

    @classmethod
    def from_json(cls, text: str, *, source: str = "preprocessor document") -> TabularPreprocessor:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{source}: not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise DataError(f"{source}: expected a JSON object, got {type(data).__name__}")
        return cls.from_dict(data, source=source)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TabularPreprocessor:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(f"preprocessor file {path} does not exist") from None
        return cls.from_json(text, source=str(path))


def _record(model: type[Record], **fields: Any) -> Record:
    """A column record; a value the contract rejects (an infinite mean, an empty category) is a
    ``DataError`` naming the column, not a pydantic traceback."""
    try:
        return model(**fields)
    except ValidationError as exc:
        problems = "; ".join(err["msg"] for err in exc.errors())
        raise DataError(
            f"column {fields.get('name')!r}: cannot fit preprocessing: {problems}",
            hint="Check the column for infinite values or empty category text.",
        ) from None


def _require_columns(frame: pd.DataFrame, names: list[str], source: str) -> None:
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise DataError(
            f"{source}: missing column(s) {missing}; the frame has {list(frame.columns)}"
        )


def _numeric_values(column: pd.Series, name: str, source: str = "data") -> pd.Series:
    """The column as float64; text that is not a number is an error naming row and value."""
    values, bad = numeric_with_bad_values(column)
    if bad.size:
        row = int(bad[0])
        raise DataError(
            f"{source}: row {_row_label(column, row)}, column {name!r}: expected a number, "
            f"got {column.iloc[row]!r} ({bad.size} such rows)"
        )
    return values


def _row_label(column: pd.Series, position: int) -> int:
    # Frames read by the adapters are indexed by their 0-based data row; report it 1-based.
    label = column.index[position]
    return int(label) + 1 if isinstance(label, (int, np.integer)) else position + 1
