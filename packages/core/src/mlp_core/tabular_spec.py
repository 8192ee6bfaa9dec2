"""The fitted tabular preprocessing, as one typed document: what mlp-data writes, what an
exporter folds into an ONNX graph and what a server reproduces.

Semantics (``mlp_data``'s ``TabularPreprocessor`` fits the numbers):

- numeric columns: a missing value becomes ``fill_value``, then ``(value - offset) / scale``;
- categorical columns: slot 0 is *missing*, slot 1 is *unknown* (not seen in training) and the
  known categories follow in listed order from slot 2; a missing value goes to ``fill_index``.
  Category values are compared as text (:func:`category_key`): ``2007``, ``2007.0`` and
  ``"2007"`` are one category;
- ``encoding: onehot`` appends one 0/1 column per slot of every categorical column to the
  ``numeric`` output; ``encoding: index`` gives a ``categorical`` output of slot indices for
  embedding tables.

JSON (``version`` changes when the meaning of a field does)::

    {"format": "mlp.tabular_preprocessor", "version": 1,
     "options": {"numeric_impute": "mean", "numeric_fill_value": 0.0, "scaling": "standard",
                 "categorical_impute": "missing_slot", "categorical_fill_value": "missing",
                 "encoding": "onehot"},
     "task": "classification", "target": "species", "target_classes": ["Adelie", ...],
     "numeric": [{"name": "bill_length_mm", "fill_value": 43.9, "offset": 43.9, "scale": 5.4}],
     "categorical": [{"name": "island", "categories": ["Biscoe", "Dream", "Torgersen"],
                      "missing_index": 0, "unknown_index": 1, "first_category_index": 2,
                      "fill_index": 0, "cardinality": 5}],
     "outputs": {"numeric": ["bill_length_mm", "island=<missing>", ...], "categorical": []}}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import cached_property
from typing import Any, Literal

from pydantic import Field, model_validator

from mlp_core import batch
from mlp_core.contract import Contract
from mlp_core.errors import DataError, MlpError

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


def category_key(value: Any) -> str | None:
    """The text a category value is compared by; ``None`` for a missing value.

    A whole float is written as an integer (``2007.0``, read from an int column with gaps, is
    the category ``"2007"``) and booleans as ``"True"``/``"False"``.
    """
    if value is None or type(value).__name__ == "NAType":  # pandas.NA, without importing pandas
        return None
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return str(bool(value))
    if isinstance(value, float) or type(value).__name__.startswith("float"):
        number = float(value)
        if math.isnan(number):
            return None
        if number.is_integer():
            return str(int(number))
    return str(value)


class PreprocessingOptions(Contract):
    """How to impute, scale and encode; the fitted numbers live in the columns."""

    numeric_impute: NumericImpute = "mean"
    numeric_fill_value: float = 0.0
    scaling: Scaling = "standard"
    # "missing_slot" keeps missingness visible to the model (slot 0) instead of guessing a value.
    categorical_impute: CategoricalImpute = "missing_slot"
    categorical_fill_value: str = "missing"
    encoding: Encoding = "onehot"


class NumericColumn(Contract):
    name: str
    fill_value: float = Field(allow_inf_nan=False)
    offset: float = Field(allow_inf_nan=False)
    scale: float = Field(allow_inf_nan=False)

    @model_validator(mode="after")
    def _nonzero_scale(self) -> NumericColumn:
        if self.scale == 0.0:
            raise ValueError(f"numeric column {self.name!r}: scale is 0")
        return self


class CategoricalColumn(Contract):
    name: str
    categories: tuple[str, ...]
    fill_index: int = MISSING_INDEX
    missing_index: Literal[0] = MISSING_INDEX
    unknown_index: Literal[1] = UNKNOWN_INDEX
    first_category_index: Literal[2] = FIRST_CATEGORY_INDEX
    cardinality: int | None = Field(
        default=None, description="written for readers; checked on load"
    )

    @model_validator(mode="after")
    def _consistent(self) -> CategoricalColumn:
        if len(set(self.categories)) != len(self.categories) or "" in self.categories:
            raise ValueError(f"column {self.name!r}: categories repeat or hold an empty string")
        slots = FIRST_CATEGORY_INDEX + len(self.categories)
        if self.cardinality is None:
            object.__setattr__(self, "cardinality", slots)
        elif self.cardinality != slots:
            raise ValueError(f"column {self.name!r}: cardinality disagrees with categories")
        if not 0 <= self.fill_index < slots:
            raise ValueError(f"column {self.name!r}: fill_index {self.fill_index} is no slot")
        return self

    @property
    def slots(self) -> int:
        """Slots in all: embedding rows, or the one-hot width."""
        return FIRST_CATEGORY_INDEX + len(self.categories)

    @cached_property
    def index(self) -> dict[str, int]:
        """Category key -> slot."""
        return {c: i + FIRST_CATEGORY_INDEX for i, c in enumerate(self.categories)}

    def slot_names(self) -> list[str]:
        return [f"{self.name}=<missing>", f"{self.name}=<unknown>"] + [
            f"{self.name}={c}" for c in self.categories
        ]

    def lookup(self) -> dict[str, int]:
        """Raw text -> slot for every text naming a known category, the float spelling of a
        whole number (``"2007.0"``) included, as :func:`category_key` compares them."""
        table = dict(self.index)
        for category, slot in self.index.items():
            if category.lstrip("-").isdigit():
                table.setdefault(f"{int(category)}.0", slot)
        return table

    def slot_of(self, raw: str) -> int:
        """The slot of one raw text value from a request ("" is a missing value)."""
        if raw == "":
            return self.fill_index
        return self.lookup().get(raw, UNKNOWN_INDEX)


class TabularPreprocessing(Contract):
    """The whole document; :meth:`parse` checks one read from JSON."""

    format: Literal["mlp.tabular_preprocessor"] = FORMAT
    version: Literal[1] = VERSION
    options: PreprocessingOptions = PreprocessingOptions()
    task: TabularTask = "classification"
    target: str | None = None
    target_classes: tuple[str, ...] | None = None
    numeric: tuple[NumericColumn, ...] = ()
    categorical: tuple[CategoricalColumn, ...] = ()
    outputs: dict[str, list[str]] | None = Field(default=None, description="written for readers")

    @classmethod
    def parse(
        cls,
        raw: Mapping[str, Any],
        *,
        error: type[MlpError] = DataError,
        hint: str | None = None,
        source: str | None = None,
    ) -> TabularPreprocessing:
        """The document in ``raw``, or ``error`` naming every problem; another format or
        version is refused first, with what it is."""
        if raw.get("format") != FORMAT or raw.get("version") != VERSION:
            raise error(
                f"{source or 'tabular preprocessing'}: expected a {FORMAT} version {VERSION} "
                f"document, got format={raw.get('format')!r} version={raw.get('version')!r}",
                hint=hint,
            )
        return super().parse(raw, error=error, hint=hint, source=source)

    def to_dict(self) -> dict[str, Any]:
        document = self.model_dump(mode="json")
        document["outputs"] = self.output_columns
        return document

    @property
    def encoding(self) -> Encoding:
        return self.options.encoding

    @property
    def numeric_names(self) -> list[str]:
        return [c.name for c in self.numeric]

    @property
    def categorical_names(self) -> list[str]:
        return [c.name for c in self.categorical]

    @property
    def output_columns(self) -> dict[str, list[str]]:
        """Column names of each output array, in order."""
        numeric = self.numeric_names
        categorical: list[str] = []
        if self.encoding == "onehot":
            for col in self.categorical:
                numeric.extend(col.slot_names())
        else:
            categorical = self.categorical_names
        return {batch.NUMERIC: numeric, batch.CATEGORICAL: categorical}

    @property
    def network_width(self) -> int:
        """Columns of the model's ``numeric`` input."""
        return len(self.output_columns[batch.NUMERIC])

    @property
    def cardinalities(self) -> list[int]:
        """Embedding table sizes of the ``categorical`` input (``index`` encoding)."""
        return [c.slots for c in self.categorical] if self.encoding == "index" else []
