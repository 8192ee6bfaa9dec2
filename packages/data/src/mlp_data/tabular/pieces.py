"""Reading a table too big for memory: pieces to share out, batches of bounded size.

A table is cut into *pieces*, the unit that workers and ranks share: a Parquet row group, or a
byte range of a CSV file. A CSV row belongs to the piece that holds its first byte, so pieces
meet exactly at row starts and every row is read once. Like pyarrow's own default
(``newlines_in_values=False``), this assumes no quoted value spans lines.

Each piece is read as pyarrow record batches of about ``block_bytes`` (CSV) or ``batch_rows``
rows (Parquet), so a reader holds one batch at a time whatever the file size.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mlp_core.errors import DataError
from mlp_data.tabular.files import check_file, is_parquet, read_header

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

DEFAULT_CHUNK_BYTES = 64 << 20
DEFAULT_BLOCK_BYTES = 4 << 20
DEFAULT_BATCH_ROWS = 65_536


@dataclass(frozen=True)
class Piece:
    """Rows ``[start, stop)`` of a file: byte offsets (CSV) or row-group numbers (Parquet)."""

    index: int
    start: int
    stop: int


def plan_pieces(
    path: str | os.PathLike[str], *, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> list[Piece]:
    file = check_file(path)
    if is_parquet(file):
        groups = pq.ParquetFile(file).num_row_groups
        return [Piece(i, i, i + 1) for i in range(groups)]
    size = file.stat().st_size
    with open(file, "rb") as handle:
        handle.readline()
        data_start = handle.tell()
    starts = range(data_start, size, max(1, chunk_bytes))
    return [Piece(i, s, min(s + chunk_bytes, size)) for i, s in enumerate(starts)]


def read_piece(
    path: str | os.PathLike[str],
    piece: Piece,
    *,
    columns: list[str] | None = None,
    column_types: dict[str, pa.DataType] | None = None,
    delimiter: str = ",",
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> Iterator[pa.RecordBatch]:
    """The record batches of one piece, in file order."""
    file = Path(path)
    if is_parquet(file):
        reader = pq.ParquetFile(file)
        yield from reader.iter_batches(
            batch_size=batch_rows, row_groups=[piece.start], columns=columns
        )
        return
    header = read_header(file, delimiter=delimiter)
    begin, end = _row_start(file, piece.start), _row_start(file, piece.stop)
    if begin >= end:
        return
    stream = io.BufferedReader(_ByteRange(file, begin, end), buffer_size=1 << 20)
    try:
        reader = pacsv.open_csv(
            stream,
            read_options=pacsv.ReadOptions(column_names=header, block_size=block_bytes),
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=pacsv.ConvertOptions(
                include_columns=columns or [], column_types=column_types or {}
            ),
        )
        yield from reader
    except pa.ArrowInvalid as exc:
        raise DataError(f"{file}: in bytes {begin}-{end}: {exc}") from None
    finally:
        stream.close()


def iter_batches(
    path: str | os.PathLike[str],
    *,
    columns: list[str] | None = None,
    column_types: dict[str, pa.DataType] | None = None,
    delimiter: str = ",",
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> Iterator[pa.RecordBatch]:
    """Every record batch of a CSV or Parquet file, in file order, one at a time."""
    for piece in plan_pieces(path, chunk_bytes=chunk_bytes):
        yield from read_piece(
            path,
            piece,
            columns=columns,
            column_types=column_types,
            delimiter=delimiter,
            block_bytes=block_bytes,
            batch_rows=batch_rows,
        )


def _row_start(file: Path, offset: int) -> int:
    """The first row start at or after ``offset`` (the file size if none)."""
    with open(file, "rb") as handle:
        handle.seek(max(offset - 1, 0))
        if offset > 0:
            handle.readline()  # ends at the newline before the first row starting >= offset
        return handle.tell()


class _ByteRange(io.RawIOBase):
    """A read-only view of bytes ``[start, stop)`` of a file."""

    def __init__(self, file: Path, start: int, stop: int) -> None:
        self._handle = open(file, "rb")  # noqa: SIM115 - closed in close()
        self._handle.seek(start)
        self._left = stop - start

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        if self._left <= 0:
            return 0
        view = memoryview(buffer)[: self._left]
        count = self._handle.readinto(view)
        self._left -= count
        return count

    def close(self) -> None:
        self._handle.close()
        super().close()
