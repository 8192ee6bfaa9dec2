"""Reading a whole CSV or Parquet table with errors that name the file, row and column.

CSV goes through pandas with the pyarrow engine; ``.parquet`` / ``.pq`` files through pyarrow.
Rows are numbered from 1 for the first data row, so row N of a CSV with a header is on line N+1.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlp_core.errors import DataError

PARQUET_SUFFIXES = (".parquet", ".pq")
_SCAN_CHUNK = 1 << 20


def is_parquet(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in PARQUET_SUFFIXES


def check_file(path: str | os.PathLike[str]) -> Path:
    """The path, if it names a non-empty regular file."""
    file = Path(path)
    if not file.exists():
        parent = file.parent if file.parent.exists() else None
        nearby = sorted(p.name for p in parent.iterdir() if p.is_file())[:10] if parent else []
        raise DataError(
            f"data file {file} does not exist" + (f"; {parent} holds {nearby}" if nearby else ""),
            hint="Set data.path to an existing CSV or Parquet file.",
        )
    if not file.is_file():
        raise DataError(f"data path {file} is not a file")
    if file.stat().st_size == 0:
        raise DataError(f"data file {file} is empty (0 bytes)", hint="Expected a header row.")
    return file


def find_invalid_utf8(path: str | os.PathLike[str]) -> tuple[int, int, bytes] | None:
    """``(byte offset, line, bad bytes)`` of the first invalid UTF-8 in a file, else ``None``."""
    offset = 0  # file offset of data[0]
    lines_before = 0  # newlines before data[0]
    carry = b""
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(_SCAN_CHUNK)
            data = carry + chunk
            if not data:
                return None
            try:
                data.decode("utf-8")
                valid = len(data)
            except UnicodeDecodeError as exc:
                # A character cut by the chunk boundary is completed by the next read.
                if chunk and exc.reason == "unexpected end of data":
                    valid = exc.start
                else:
                    line = lines_before + data.count(b"\n", 0, exc.start) + 1
                    return offset + exc.start, line, data[exc.start : exc.end]
            if not chunk:
                return None
            lines_before += data.count(b"\n", 0, valid)
            offset += valid
            carry = data[valid:]


def check_utf8(path: str | os.PathLike[str]) -> None:
    found = find_invalid_utf8(path)
    if found:
        offset, line, bad = found
        raise DataError(
            f"{path}: not UTF-8 text: invalid byte(s) {bad!r} at byte offset {offset} (line {line})",
            hint="Re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`).",
        )


def read_header(path: str | os.PathLike[str], *, delimiter: str = ",") -> list[str]:
    """Column names, reading only the start of the file."""
    file = check_file(path)
    if is_parquet(file):
        return list(pq.ParquetFile(file).schema_arrow.names)
    try:
        return list(pd.read_csv(file, sep=delimiter, nrows=0, encoding="utf-8").columns)
    except UnicodeDecodeError:
        check_utf8(file)
        raise


def read_table(
    path: str | os.PathLike[str],
    *,
    columns: list[str] | None = None,
    delimiter: str = ",",
) -> pd.DataFrame:
    """The whole table (only ``columns`` when given), indexed by 0-based data row."""
    file = check_file(path)
    if columns is not None:
        header = read_header(file, delimiter=delimiter)
        absent = [c for c in columns if c not in header]
        if absent:
            raise DataError(f"{file}: no column(s) {absent}; the file has {header}")
    if is_parquet(file):
        frame = _read_parquet(file, columns)
    else:
        # pyarrow reads invalid UTF-8 as raw bytes instead of failing, so check first; the scan
        # runs at disk speed and names the exact byte, which the parser cannot.
        check_utf8(file)
        frame = _read_csv(file, columns, delimiter)
    if frame.empty:
        raise DataError(f"{file}: has a header ({list(frame.columns)}) but no data rows")
    return frame


def _read_csv(file: Path, columns: list[str] | None, delimiter: str) -> pd.DataFrame:
    try:
        return pd.read_csv(file, sep=delimiter, engine="pyarrow", usecols=columns)
    except pd.errors.EmptyDataError:
        raise DataError(f"{file}: no header row and no data") from None
    except (pd.errors.ParserError, pa.ArrowInvalid, ValueError) as exc:
        raise DataError(f"{file}: cannot parse as CSV: {exc}") from None


def _read_parquet(file: Path, columns: list[str] | None) -> pd.DataFrame:
    try:
        return pq.read_table(file, columns=columns).to_pandas()
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{file}: cannot read as Parquet: {exc}") from None


def numeric_with_bad_values(column: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """A column as numbers, keeping any value that is not a number as it was.

    Returns the column (float64 if clean, else object with the bad values in place, so that a
    validator can report them) and the positions of the bad values.
    """
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        return column.astype(np.float64), np.empty(0, dtype=np.int64)
    coerced = to_numbers(column)
    bad = np.flatnonzero((coerced.isna() & column.notna()).to_numpy())
    if bad.size == 0:
        return coerced.astype(np.float64), bad
    mixed = coerced.astype(object)
    mixed.iloc[bad] = column.iloc[bad].to_numpy(dtype=object)
    return mixed, bad


def to_numbers(column: pd.Series) -> pd.Series:
    """``pd.to_numeric(column, errors="coerce")``: what is not a number becomes NaN."""
    # pandas annotates to_numeric as returning a scalar, array or Series for any input; a
    # Series in gives a Series out, which the wrapper states to the type checker.
    return pd.Series(pd.to_numeric(column, errors="coerce"), index=column.index, name=column.name)
