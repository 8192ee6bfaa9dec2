"""The fitted tabular preprocessing of a run, read from its JSON, and a numpy reference of it.

The JSON is the one ``mlp_data.tabular.TabularPreprocessor`` writes (see that module's
docstring): numeric columns are imputed with ``fill_value`` then scaled as
``(value - offset) / scale``; a categorical column maps a missing value to ``fill_index``, an
unseen category to slot 1 and known categories to slots 2, 3, ... in listed order; ``onehot``
encoding appends one 0/1 column per slot to ``numeric``, ``index`` encoding gives ``categorical``
slot indices for embedding tables.

:meth:`TabularPipeline.reference` is the torch-side reference of the export parity check: it
follows mlp-data's semantics in float64 numpy, independently of the ONNX graph that
:mod:`mlp_serve.export.graph` builds from the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlp_serve.errors import BundleError

FORMAT = "mlp.tabular_preprocessor"
VERSION = 1
MISSING_INDEX = 0
UNKNOWN_INDEX = 1
FIRST_CATEGORY_INDEX = 2
ENCODINGS = ("onehot", "index")


@dataclass(frozen=True)
class NumericColumn:
    name: str
    fill_value: float
    offset: float
    scale: float


@dataclass(frozen=True)
class CategoricalColumn:
    name: str
    categories: tuple[str, ...]
    fill_index: int

    @property
    def cardinality(self) -> int:
        return FIRST_CATEGORY_INDEX + len(self.categories)

    def lookup(self) -> dict[str, int]:
        """Raw string -> slot, for every string that names a known category.

        A category that is a whole number also answers to its float spelling (``"2007.0"``),
        as mlp-data compares category values by text with whole floats written as integers.
        """
        table: dict[str, int] = {}
        for position, category in enumerate(self.categories):
            slot = FIRST_CATEGORY_INDEX + position
            table[category] = slot
            alias = _float_alias(category)
            if alias is not None and alias not in self.categories:
                table.setdefault(alias, slot)
        return table

    def slot_of(self, raw: str) -> int:
        """The slot of one raw value, as mlp-data assigns it ("" is a missing value)."""
        if raw == "":
            return self.fill_index
        for key in (raw, category_key(raw)):
            if key in self.categories:
                return FIRST_CATEGORY_INDEX + self.categories.index(key)
        return UNKNOWN_INDEX


@dataclass(frozen=True)
class TabularPipeline:
    """What the preprocessing JSON says, checked; the ONNX graph and the reference read it."""

    numeric: tuple[NumericColumn, ...]
    categorical: tuple[CategoricalColumn, ...]
    encoding: str
    task: str  # "classification" or "regression" (mlp-data's words)
    target: str | None
    target_classes: tuple[str, ...] | None
    raw: dict[str, Any]

    @property
    def numeric_names(self) -> list[str]:
        return [c.name for c in self.numeric]

    @property
    def categorical_names(self) -> list[str]:
        return [c.name for c in self.categorical]

    @property
    def network_width(self) -> int:
        """Columns of the network's ``numeric`` input."""
        extra = sum(c.cardinality for c in self.categorical) if self.encoding == "onehot" else 0
        return len(self.numeric) + extra

    @property
    def cardinalities(self) -> list[int]:
        return [c.cardinality for c in self.categorical] if self.encoding == "index" else []

    def reference(self, numeric: np.ndarray, categorical: np.ndarray) -> dict[str, np.ndarray]:
        """The network inputs for raw rows: ``numeric`` [B, n] (NaN = missing) and
        ``categorical`` [B, k] strings ("" = missing), computed in float64 as mlp-data does."""
        rows = numeric.shape[0] if self.numeric else categorical.shape[0]
        parts = []
        if self.numeric:
            values = np.asarray(numeric, dtype=np.float64)
            for j, col in enumerate(self.numeric):
                column = np.where(np.isnan(values[:, j]), col.fill_value, values[:, j])
                parts.append(((column - col.offset) / col.scale).astype(np.float32)[:, None])
        slots = [
            np.array([col.slot_of(str(v)) for v in categorical[:, j]], dtype=np.int64)
            for j, col in enumerate(self.categorical)
        ]
        out: dict[str, np.ndarray] = {}
        if self.encoding == "onehot":
            for col, index in zip(self.categorical, slots):
                onehot = np.zeros((rows, col.cardinality), dtype=np.float32)
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


def read_pipeline(preprocessing: dict[str, Any], *, source: str) -> TabularPipeline:
    """Parse and check the run's ``preprocessing.json`` (``{"type": "tabular", ...}``)."""
    if preprocessing.get("type") != "tabular" or not isinstance(
        preprocessing.get("preprocessor"), dict
    ):
        raise BundleError(f"{source}: not a tabular preprocessing record (type 'tabular')")
    data = preprocessing["preprocessor"]
    if data.get("format") != FORMAT or data.get("version") != VERSION:
        raise BundleError(
            f"{source}: expected a {FORMAT} version {VERSION} document, got "
            f"format={data.get('format')!r} version={data.get('version')!r}",
            hint="Export with the mlp-serve version that matches the mlp-data that trained it.",
        )
    try:
        encoding = data["options"]["encoding"]
        numeric = tuple(_numeric_column(c, source) for c in data["numeric"])
        categorical = tuple(_categorical_column(c, source) for c in data["categorical"])
        classes = data.get("target_classes")
        pipeline = TabularPipeline(
            numeric=numeric,
            categorical=categorical,
            encoding=encoding,
            task=data["task"],
            target=data.get("target"),
            target_classes=tuple(str(c) for c in classes) if classes is not None else None,
            raw=data,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{source}: malformed preprocessor: {exc!r}") from None
    if encoding not in ENCODINGS:
        raise BundleError(f"{source}: unknown encoding {encoding!r}; expected one of {ENCODINGS}")
    return pipeline


def _numeric_column(data: dict[str, Any], source: str) -> NumericColumn:
    column = NumericColumn(
        str(data["name"]), float(data["fill_value"]), float(data["offset"]), float(data["scale"])
    )
    for key in ("fill_value", "offset", "scale"):
        if not math.isfinite(getattr(column, key)):
            raise BundleError(f"{source}: numeric column {column.name!r}: {key} is not finite")
    if column.scale == 0.0:
        raise BundleError(f"{source}: numeric column {column.name!r}: scale is 0")
    return column


def _categorical_column(data: dict[str, Any], source: str) -> CategoricalColumn:
    name = str(data["name"])
    slots = (data["missing_index"], data["unknown_index"], data["first_category_index"])
    if tuple(slots) != (MISSING_INDEX, UNKNOWN_INDEX, FIRST_CATEGORY_INDEX):
        raise BundleError(f"{source}: column {name!r}: unsupported slot layout {slots}")
    categories = tuple(str(c) for c in data["categories"])
    if len(set(categories)) != len(categories) or "" in categories:
        raise BundleError(f"{source}: column {name!r}: categories repeat or hold an empty string")
    column = CategoricalColumn(name, categories, int(data["fill_index"]))
    if not 0 <= column.fill_index < column.cardinality:
        raise BundleError(f"{source}: column {name!r}: fill_index {column.fill_index} is no slot")
    if int(data.get("cardinality", column.cardinality)) != column.cardinality:
        raise BundleError(f"{source}: column {name!r}: cardinality disagrees with categories")
    return column


def category_key(raw: str) -> str:
    # mlp-data compares categories by text, with a whole float (2007.0, read from an int column
    # with gaps) written as the integer "2007"; "2007.0" is accepted for it here too.
    if raw.endswith(".0"):
        head = raw[:-2]
        try:
            if str(int(head)) == head:
                return head
        except ValueError:
            pass
    return raw


def _float_alias(category: str) -> str | None:
    try:
        number = int(category)
    except ValueError:
        return None
    return f"{number}.0"
