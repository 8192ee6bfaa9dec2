"""Tabular preprocessing fitted on the training split and saved as plain JSON.

:class:`TabularPreprocessor` imputes, scales and encodes a table into the arrays a model reads
(keys of :mod:`mlp_core.batch`). Every fitted number lives in its JSON form, never in a pickle,
so an exporter can fold it into an ONNX graph and a server can reproduce it bit for bit.

Output layout
    ``numeric``      float32 [n, len(outputs.numeric)]: the numeric columns, each as
                     ``(value - offset) / scale`` after imputation, then (``encoding: onehot``)
                     one 0/1 column per slot of every categorical column.
    ``categorical``  int64 [n, len(outputs.categorical)] (``encoding: index``): one slot index per
                     categorical column, for an embedding table of ``cardinality`` rows.
    ``target``       int64 [n] class index (classification) or float32 [n] (regression); only
                     when the frame holds the target column.
A key is left out when it would have no columns.

Category slots
    Slot 0 is *missing* (NaN/None), slot 1 is *unknown* (a category not seen in training), and
    known categories follow in sorted order from slot 2. Category values are compared as text:
    ``2007``, ``2007.0`` and ``"2007"`` are the same category.

JSON format (``to_json()``; ``version`` changes when the meaning of a field does)::

    {
      "format": "mlp.tabular_preprocessor", "version": 1,
      "options": {"numeric_impute": "mean", "numeric_fill_value": 0.0,
                  "scaling": "standard", "categorical_impute": "missing_slot",
                  "categorical_fill_value": "missing", "encoding": "onehot"},
      "task": "classification",              # or "regression"
      "target": "species",                   # null when fitted without a target
      "target_classes": ["Adelie", ...],     # class index i <-> name; null for regression
      "numeric": [{"name": "bill_length_mm",
                   "fill_value": 43.92,      # replaces a missing value, before scaling
                   "offset": 43.92, "scale": 5.45}],   # mean/std, min/range, or 0/1
      "categorical": [{"name": "island",
                       "categories": ["Biscoe", "Dream", "Torgersen"],  # slot 2, 3, 4
                       "missing_index": 0, "unknown_index": 1, "first_category_index": 2,
                       "fill_index": 0,      # slot a missing value goes to after imputation
                       "cardinality": 5}],   # slots in all: embedding rows / one-hot width
      "outputs": {"numeric": ["bill_length_mm", ..., "island=<missing>", "island=<unknown>",
                              "island=Biscoe", ...],
                  "categorical": []}         # column names of each output array, in order
    }
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from mlp_core import batch
from mlp_core.errors import DataError
from mlp_core.files import atomic_write_text

FORMAT = "mlp.tabular_preprocessor"
VERSION = 1

MISSING_INDEX = 0
UNKNOWN_INDEX = 1
FIRST_CATEGORY_INDEX = 2

NumericImpute = Literal["mean", "median", "constant", "most_frequent"]
CategoricalImpute = Literal["missing_slot", "most_frequent", "constant"]
Scaling = Literal["standard", "minmax", "none"]
Encoding = Literal["onehot", "index"]
TabularTask = Literal["classification", "regression"]


@dataclass(frozen=True)
class PreprocessingOptions:
    """How to impute, scale and encode; the fitted numbers live in the preprocessor."""

    numeric_impute: NumericImpute = "mean"
    numeric_fill_value: float = 0.0
    scaling: Scaling = "standard"
    # "missing_slot" keeps missingness visible to the model (slot 0) instead of guessing a value.
    categorical_impute: CategoricalImpute = "missing_slot"
    categorical_fill_value: str = "missing"
    encoding: Encoding = "onehot"


@dataclass
class NumericColumn:
    name: str
    fill_value: float
    offset: float
    scale: float


@dataclass
class CategoricalColumn:
    name: str
    categories: list[str]
    fill_index: int = MISSING_INDEX
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.index = {c: i + FIRST_CATEGORY_INDEX for i, c in enumerate(self.categories)}

    @property
    def cardinality(self) -> int:
        return FIRST_CATEGORY_INDEX + len(self.categories)

    def slot_names(self) -> list[str]:
        return [f"{self.name}=<missing>", f"{self.name}=<unknown>"] + [
            f"{self.name}={c}" for c in self.categories
        ]


def category_key(value: Any) -> str | None:
    """The text a category value is compared by; ``None`` for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))  # 2007.0 (an int column with gaps) is the category "2007"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    return str(value)


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
        self.task = task
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
        return NumericColumn(name, fill_value=fill, offset=offset, scale=scale)

    def _fit_categorical(self, name: str, column: pd.Series) -> CategoricalColumn:
        opts = self.options
        categories = set(sorted_categories(column))
        if opts.categorical_impute == "constant":
            categories.add(str(opts.categorical_fill_value))
        ordered = sorted_categories(list(categories))
        encoded = CategoricalColumn(name, ordered)
        if opts.categorical_impute == "constant":
            encoded.fill_index = encoded.index[str(opts.categorical_fill_value)]
        elif opts.categorical_impute == "most_frequent" and ordered:
            codes, uniques = pd.factorize(column, use_na_sentinel=True)
            counts: dict[str, int] = {}
            for key, count in zip(map(category_key, uniques), np.bincount(codes[codes >= 0])):
                counts[key] = counts.get(key, 0) + int(count)
            # Ties go to the first category in sorted order, so two fits agree.
            top = min(counts, key=lambda key: (-counts[key], ordered.index(key)))
            encoded.fill_index = encoded.index[top]
        return encoded

    def _set_classes(self, classes: list[str]) -> None:
        self.target_classes = classes
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
                onehot = np.zeros((rows, col.cardinality), dtype=np.float32)
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
        lookup = np.array(
            [
                col.fill_index if (key := category_key(u)) is None else col.index.get(key, 1)
                for u in uniques
            ]
            + [col.fill_index],  # code -1 (missing) indexes the last entry
            dtype=np.int64,
        )
        return lookup[codes]

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
            if key not in self._class_index:
                row = int(np.flatnonzero(codes == len(lookup))[0])
                raise DataError(
                    f"{source}: row {_row_label(column, row)}, column {name!r}: class {key!r} "
                    f"is not one of the fitted classes {self.target_classes}"
                )
            lookup.append(self._class_index[key])
        return np.asarray(lookup, dtype=np.int64)[codes]

    # -- what a model and an exporter read -------------------------------------------------

    @property
    def output_columns(self) -> dict[str, list[str]]:
        numeric = [c.name for c in self.numeric]
        categorical: list[str] = []
        if self.options.encoding == "onehot":
            for col in self.categorical:
                numeric.extend(col.slot_names())
        else:
            categorical = [c.name for c in self.categorical]
        return {batch.NUMERIC: numeric, batch.CATEGORICAL: categorical}

    def model_inputs(self) -> dict[str, Any]:
        cardinalities = (
            [c.cardinality for c in self.categorical] if self.options.encoding == "index" else []
        )
        return {
            "num_numeric": len(self.output_columns[batch.NUMERIC]),
            "categorical_cardinalities": cardinalities,
        }

    # -- JSON ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        if not self.fitted:
            raise DataError("TabularPreprocessor must be fitted before it is saved")
        opts = self.options
        return {
            "format": FORMAT,
            "version": VERSION,
            "options": {
                "numeric_impute": opts.numeric_impute,
                "numeric_fill_value": float(opts.numeric_fill_value),
                "scaling": opts.scaling,
                "categorical_impute": opts.categorical_impute,
                "categorical_fill_value": opts.categorical_fill_value,
                "encoding": opts.encoding,
            },
            "task": self.task,
            "target": self.target,
            "target_classes": self.target_classes,
            "numeric": [
                {"name": c.name, "fill_value": c.fill_value, "offset": c.offset, "scale": c.scale}
                for c in self.numeric
            ],
            "categorical": [
                {
                    "name": c.name,
                    "categories": c.categories,
                    "missing_index": MISSING_INDEX,
                    "unknown_index": UNKNOWN_INDEX,
                    "first_category_index": FIRST_CATEGORY_INDEX,
                    "fill_index": c.fill_index,
                    "cardinality": c.cardinality,
                }
                for c in self.categorical
            ],
            "outputs": self.output_columns,
        }

    def to_json(self) -> str:
        # allow_nan=False: a NaN would not be valid JSON for other readers (a server, onnx tools).
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def save(self, path: str | os.PathLike[str]) -> Path:
        return atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TabularPreprocessor:
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise DataError(
                f"not a {FORMAT} version {VERSION} document "
                f"(format={data.get('format')!r}, version={data.get('version')!r})"
            )
        for col in data["categorical"]:
            slots = (col["missing_index"], col["unknown_index"], col["first_category_index"])
            if slots != (MISSING_INDEX, UNKNOWN_INDEX, FIRST_CATEGORY_INDEX):
                raise DataError(f"column {col['name']!r}: unsupported slot layout {slots}")
        prep = cls(
            [c["name"] for c in data["numeric"]],
            [c["name"] for c in data["categorical"]],
            target=data["target"],
            task=data["task"],
            options=PreprocessingOptions(**data["options"]),
        )
        prep.numeric = [
            NumericColumn(c["name"], float(c["fill_value"]), float(c["offset"]), float(c["scale"]))
            for c in data["numeric"]
        ]
        prep.categorical = [
            CategoricalColumn(c["name"], list(c["categories"]), fill_index=int(c["fill_index"]))
            for c in data["categorical"]
        ]
        if data["target_classes"] is not None:
            prep._set_classes(list(data["target_classes"]))
        prep.fitted = True
        return prep

    @classmethod
    def from_json(cls, text: str) -> TabularPreprocessor:
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TabularPreprocessor:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(f"preprocessor file {path} does not exist") from None
        try:
            return cls.from_json(text)
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"{path}: not a valid preprocessor file: {exc}") from None


def _require_columns(frame: pd.DataFrame, names: list[str], source: str) -> None:
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise DataError(
            f"{source}: missing column(s) {missing}; the frame has {list(frame.columns)}"
        )


def _numeric_values(column: pd.Series, name: str, source: str = "data") -> pd.Series:
    """The column as float64; text that is not a number is an error naming row and value."""
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        return column.astype(np.float64)
    coerced = pd.to_numeric(column, errors="coerce")
    bad = (coerced.isna() & column.notna()).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{source}: row {_row_label(column, row)}, column {name!r}: expected a number, "
            f"got {column.iloc[row]!r} ({int(bad.sum())} such rows)"
        )
    return coerced.astype(np.float64)


def _row_label(column: pd.Series, position: int) -> int:
    # Frames read by the adapters are indexed by their 0-based data row; report it 1-based.
    label = column.index[position]
    return int(label) + 1 if isinstance(label, (int, np.integer)) else position + 1
