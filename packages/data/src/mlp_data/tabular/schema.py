"""JSON Schema validation of table rows (the ``jsonschema`` library).

A row schema is a JSON Schema for one row as an object: ``{"type": "object", "properties":
{column: {...}}, "required": [...]}``. It is generated from an adapter's column lists
(:func:`row_schema`) or read from a JSON or YAML file the user writes. Every violation is
collected with its row and column; then the table either fails with one :class:`DataError`
listing them (capped, with a count) or loses the offending rows (``on_invalid: drop``).

Missing values (NaN, None) are allowed in feature columns, since imputation fills them, and are
violations in the target column, which nothing can fill.

Speed: a schema whose top level only has ``type``/``properties``/``required``/
``additionalProperties`` is checked one column at a time, validating each distinct value once
(and, for a numeric column under bounds-only rules, just its minimum and maximum, which decide
every value between). Any other schema is checked row by row, which is exact but slow on
millions of rows.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

from mlp_core.errors import ConfigError, DataError

OnInvalid = Literal["fail", "drop"]
DRAFT = "https://json-schema.org/draft/2020-12/schema"
DEFAULT_MAX_REPORTED = 20

# Top-level keywords that constrain each column on its own; anything else may relate columns.
_PER_COLUMN_KEYWORDS = {
    "$schema", "$id", "$comment", "$defs", "title", "description", "examples", "type",
    "properties", "required", "additionalProperties",
}  # fmt: skip
# Column keywords under which min and max of a numeric column decide every value in between.
_BOUNDS_KEYWORDS = {
    "$comment", "title", "description", "examples", "default", "type", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum",
}  # fmt: skip


def row_schema(
    numeric: list[str],
    categorical: list[str],
    *,
    target: str | None,
    task: str = "classification",
    title: str = "table row",
) -> dict[str, Any]:
    """The row schema an adapter's column lists imply."""
    label: dict[str, Any] = {"type": ["string", "number", "boolean"]}
    properties: dict[str, Any] = {name: {"type": "number"} for name in numeric}
    properties.update({name: dict(label) for name in categorical})
    if target is not None:
        properties[target] = {"type": "number"} if task == "regression" else dict(label)
    return {
        "$schema": DRAFT,
        "title": title,
        "type": "object",
        "properties": properties,
        "required": list(properties),
    }


def load_schema(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON Schema from a ``.json``, ``.yaml`` or ``.yml`` file, checked to be a valid schema."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"schema file {file} does not exist") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not UTF-8 text (byte {exc.start})") from None
    try:
        if file.suffix.lower() in (".yaml", ".yml"):
            schema = yaml.safe_load(text)
        else:
            schema = json.loads(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{file}: cannot parse the schema: {exc}") from None
    if not isinstance(schema, dict):
        raise ConfigError(f"{file}: a schema must be a mapping, got {type(schema).__name__}")
    _check_schema(schema, str(file))
    return schema


def _check_schema(schema: dict[str, Any], source: str) -> None:
    try:
        validator_for(schema, default=Draft202012Validator).check_schema(schema)
    except SchemaError as exc:
        where = "/".join(map(str, exc.path)) or "(top level)"
        raise ConfigError(f"{source}: not a valid JSON Schema at {where}: {exc.message}") from None


@dataclass(frozen=True)
class Violation:
    """One broken rule: at ``rows`` (0-based positions; empty for a whole column) of ``column``."""

    column: str | None
    message: str
    rows: np.ndarray
    value: Any = None


@dataclass
class ValidationReport:
    violations: list[Violation]
    num_rows: int

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def bad_rows(self) -> np.ndarray:
        """Positions of rows with at least one violation."""
        arrays = [v.rows for v in self.violations if v.rows.size]
        return np.unique(np.concatenate(arrays)) if arrays else np.empty(0, dtype=np.int64)

    @property
    def count(self) -> int:
        return sum(max(v.rows.size, 1) for v in self.violations)

    @property
    def has_column_violations(self) -> bool:
        return any(v.rows.size == 0 for v in self.violations)

    def lines(self, row_numbers: np.ndarray | None = None) -> Iterator[str]:
        """One line per violation, whole-column ones first, then by row."""
        for v in self.violations:
            if v.rows.size == 0:
                yield f"column {v.column!r}: {v.message}"
        cells = sorted(
            (int(row), i) for i, v in enumerate(self.violations) for row in v.rows.tolist()
        )
        for row, i in cells:
            v = self.violations[i]
            number = int(row_numbers[row]) if row_numbers is not None else row + 1
            column = f", column {v.column!r}" if v.column is not None else ""
            yield f"row {number}{column}: {v.message}"

    def error(
        self,
        source: str,
        *,
        max_reported: int = DEFAULT_MAX_REPORTED,
        row_numbers: np.ndarray | None = None,
    ) -> DataError:
        lines = []
        for line in self.lines(row_numbers):
            if len(lines) == max_reported:
                break
            lines.append(line)
        total = self.count
        rows = self.bad_rows.size
        header = (
            f"{source}: {total} schema violation{'s' if total != 1 else ''} "
            f"in {rows} of {self.num_rows} rows"
        )
        if self.has_column_violations:
            header += " (and in whole columns)"
        more = [f"  ... and {total - len(lines)} more"] if total > len(lines) else []
        return DataError(
            "\n".join([header + ":", *(f"  - {line}" for line in lines), *more]),
            hint="Fix the rows named above, or set validation.on_invalid: drop to skip them.",
        )


class SchemaValidator:
    """Checks every row of a table against a row schema."""

    def __init__(
        self,
        schema: dict[str, Any],
        *,
        target: str | None = None,
        on_invalid: OnInvalid = "fail",
        max_reported: int = DEFAULT_MAX_REPORTED,
        source: str = "schema",
    ) -> None:
        _check_schema(schema, source)
        self.schema = schema
        self.target = target
        self.on_invalid = on_invalid
        self.max_reported = max_reported
        self._root: Validator = validator_for(schema, default=Draft202012Validator)(schema)
        self._per_column = set(schema) <= _PER_COLUMN_KEYWORDS and isinstance(
            schema.get("properties", {}), dict
        )

    def numeric_columns(self) -> list[str]:
        """Columns whose schema allows numbers only (so text in them is a type violation)."""
        names = []
        for name, sub in self.schema.get("properties", {}).items():
            kinds = sub.get("type") if isinstance(sub, dict) else None
            kinds = [kinds] if isinstance(kinds, str) else kinds or []
            if kinds and set(kinds) <= {"number", "integer", "null"}:
                names.append(name)
        return names

    def report(self, frame: pd.DataFrame) -> ValidationReport:
        """Every violation in ``frame``; positions are 0-based row positions."""
        check = self._columns if self._per_column else self._rows
        return ValidationReport(list(check(frame)), len(frame))

    def apply(
        self,
        frame: pd.DataFrame,
        *,
        source: str = "data",
        row_numbers: np.ndarray | None = None,
    ) -> pd.DataFrame:
        """``frame`` if valid; else fail or drop the bad rows, as ``on_invalid`` says.

        ``row_numbers`` (one per row) are what messages call the rows; by default the frame's
        integer index plus one (the adapters index frames by 0-based data row).
        """
        report = self.report(frame)
        if report.ok:
            return frame
        if row_numbers is None and pd.api.types.is_integer_dtype(frame.index):
            row_numbers = frame.index.to_numpy() + 1
        # A whole-column problem (a column missing) cannot be fixed by dropping rows.
        if self.on_invalid == "fail" or report.has_column_violations:
            raise report.error(source, max_reported=self.max_reported, row_numbers=row_numbers)
        keep = np.ones(len(frame), dtype=bool)
        keep[report.bad_rows] = False
        if not keep.any():
            raise report.error(source, max_reported=self.max_reported, row_numbers=row_numbers)
        return frame.iloc[keep]

    # -- one column at a time --------------------------------------------------------------

    def _columns(self, frame: pd.DataFrame) -> Iterator[Violation]:
        properties: dict[str, Any] = self.schema.get("properties", {})
        present = set(frame.columns)
        for name in self.schema.get("required", []):
            if name not in present:
                yield Violation(name, "required column is missing", _NO_ROWS)
        if self.schema.get("additionalProperties") is False:
            for name in frame.columns:
                if name not in properties:
                    yield Violation(name, "column is not allowed by the schema", _NO_ROWS)
        extra = self.schema.get("additionalProperties")
        for name in frame.columns:
            sub = properties.get(name, extra if isinstance(extra, dict) else None)
            if sub is None and name != self.target:
                continue
            yield from self._column(name, frame[name], sub if sub is not None else {})

    def _column(self, name: str, column: pd.Series, sub: Any) -> Iterator[Violation]:
        missing = column.isna().to_numpy()
        if name == self.target and missing.any():
            yield Violation(name, "missing value in the target column", np.flatnonzero(missing))
        if sub is True or sub == {}:
            return
        validator = self._root.evolve(schema=sub)
        values = column[~missing] if missing.any() else column
        positions = np.flatnonzero(~missing)
        if _bounds_decide(column, sub) and values.size:
            low, high = _native(values.min()), _native(values.max())
            if validator.is_valid(low) and validator.is_valid(high):
                return
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
        for code, value in enumerate(uniques):
            errors = list(validator.iter_errors(_native(value)))
            if errors:
                rows = positions[codes == code]
                message = "; ".join(e.message for e in errors)
                yield Violation(name, message, rows, value=_native(value))

    # -- row by row (schemas that relate columns) ------------------------------------------

    def _rows(self, frame: pd.DataFrame) -> Iterator[Violation]:
        present = set(frame.columns)
        for position, record in enumerate(frame.to_dict("records")):
            instance = {}
            for key, value in record.items():
                value = _native(value)
                if value is None and key != self.target:
                    continue  # a missing feature is imputed later, not a violation
                instance[key] = value
            for error in self._root.iter_errors(instance):
                column = str(error.path[0]) if error.path else None
                if error.validator == "required" and _missing_name(error) in present:
                    continue  # absent only because its value is missing
                yield Violation(column, error.message, np.array([position]))


_NO_ROWS = np.empty(0, dtype=np.int64)


def _bounds_decide(column: pd.Series, sub: Any) -> bool:
    if not isinstance(sub, dict) or not set(sub) <= _BOUNDS_KEYWORDS:
        return False
    if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        return False
    kinds = sub.get("type", "number")
    kinds = [kinds] if isinstance(kinds, str) else kinds
    # "integer" alone is not decided by the extremes: 1 and 3 pass, 2.5 between them fails.
    return "number" in kinds


def _missing_name(error: Any) -> str | None:
    # jsonschema words it "'name' is a required property"; the instance lacks error.validator_value
    # entries, so recover the name from them instead of parsing the message.
    for name in error.validator_value:
        if name not in error.instance:
            return name
    return None


def _native(value: Any) -> Any:
    """A value as JSON Schema sees it: numpy scalars to Python, NaN to None."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value
