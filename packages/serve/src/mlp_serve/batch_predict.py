"""Batch prediction over files bigger than memory: a Parquet or CSV file of raw feature rows,
through a :class:`~mlp_serve.predictor.Predictor` chunk by chunk, into a Parquet or CSV file of
predictions written as it goes (``mlp predict MODEL --local BUNDLE --input F --output F``).

One chunk (``batch_rows`` rows of the model's columns) and its predictions are in memory at a
time, besides the reader's buffers: Parquet is read with ``ParquetFile.iter_batches`` (which
decodes one row group at a time: a file written with huge row groups costs one row group's
columns), CSV with pyarrow's streaming reader in blocks of a MiB, and each chunk's predictions
are appended to the output before the next is read. Only the columns the model takes are read. The output is written to a temporary file beside the
destination and renamed at the end, so a run that fails leaves no half-written predictions.

pyarrow comes with ``mlp-serve[parquet]``.
"""

from __future__ import annotations

import csv
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from mlp_core.errors import ServingError
from mlp_serve.errors import InvalidInput

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv",)
# What `mlp predict --csv` takes as a missing value (see cli.predict.typed_rows).
CSV_MISSING = ["", "NA", "NaN"]
# Bytes per CSV block read: chunks are cut to ``batch_rows`` rows after parsing.
CSV_BLOCK_BYTES = 1 << 20
# Bytes read at a time from a Parquet column chunk.
READ_BUFFER_BYTES = 1 << 20


@dataclass(frozen=True)
class Summary:
    rows: int
    chunks: int
    seconds: float
    output: Path

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def predict_file(
    predictor: Any,
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    batch_rows: int = 4096,
    progress: Progress | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> Summary:
    """Stream ``source`` through ``predictor`` into ``destination``; returns what was done.

    ``on_chunk`` is told each chunk's row count (the chunks never exceed ``batch_rows``).
    """
    source, destination = Path(source), Path(destination)
    if batch_rows < 1:
        raise InvalidInput(f"the batch size must be at least 1, not {batch_rows}")
    schema = predictor.manifest.feature_schema if predictor.manifest is not None else None
    if schema is None:
        raise InvalidInput(
            f"model {predictor.name!r} has no feature schema: files of rows need a tabular bundle"
        )
    wanted = [*schema.numeric, *schema.categorical]
    writer = _Writer(destination)  # a bad destination is refused before anything is read
    chunks, total = read_chunks(source, wanted, set(schema.categorical), batch_rows)
    progress = progress or Progress(total=total, enabled=False)
    progress.total = total
    started = time.perf_counter()
    rows = count = 0
    try:
        for chunk in chunks:
            writer.write(predictor.predict_table(chunk))
            rows += chunk.num_rows
            count += 1
            if on_chunk is not None:
                on_chunk(chunk.num_rows)
            progress.update(rows)
        progress.update(rows, final=True)
        if rows == 0:
            raise InvalidInput(f"{source}: no rows to predict")
        writer.commit()
    finally:
        writer.discard()
        progress.close()
    return Summary(rows, count, time.perf_counter() - started, destination)


def read_chunks(
    path: Path, wanted: list[str], text_columns: set[str], batch_rows: int
) -> tuple[Iterator[pa.RecordBatch], int | None]:
    """Record batches of at most ``batch_rows`` rows holding the ``wanted`` columns the file
    has, and the file's row count when it is known before reading (Parquet's metadata)."""
    if not path.is_file():
        raise ServingError(f"--input {path}: no such file")
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        try:
            # pyarrow's default pre-buffers every row group's column chunks before the first
            # batch (the whole file's columns in memory); unbuffered, it reads as it goes.
            parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=READ_BUFFER_BYTES)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InvalidInput(f"{path}: not a readable Parquet file: {exc}") from None
        columns = _present(path, wanted, parquet.schema_arrow.names)
        batches = parquet.iter_batches(batch_size=batch_rows, columns=columns)
        return _reading(path, batches, batch_rows), parquet.metadata.num_rows
    if suffix in CSV_SUFFIXES:
        return _csv_chunks(path, wanted, text_columns, batch_rows), None
    raise InvalidInput(
        f"--input {path}: expected a .parquet (or .pq) or .csv file, not {suffix or 'no suffix'}"
    )


def _present(path: Path, wanted: list[str], names: list[str]) -> list[str]:
    columns = [c for c in wanted if c in names]
    if not columns:
        raise InvalidInput(
            f"{path}: none of the model's columns {wanted} is in the file (it has {names[:20]})"
        )
    absent = [c for c in wanted if c not in names]
    if absent:
        print(
            f"mlp predict: {path.name} has no column {absent}: missing in every row",
            file=sys.stderr,
        )
    return columns


def _csv_chunks(
    path: Path, wanted: list[str], text_columns: set[str], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    with open(path, newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle), [])
    columns = _present(path, wanted, header)
    types = {c: pa.string() if c in text_columns else pa.float64() for c in columns}
    options = pa_csv.ConvertOptions(
        include_columns=columns,
        column_types=types,
        null_values=CSV_MISSING,
        strings_can_be_null=True,
    )
    try:
        reader = pa_csv.open_csv(
            path,
            read_options=pa_csv.ReadOptions(block_size=CSV_BLOCK_BYTES),
            convert_options=options,
        )
    except pa.ArrowInvalid as exc:
        raise InvalidInput(f"{path}: {exc}") from None
    return _reading(path, _cut(reader, batch_rows), batch_rows)


def _cut(batches: Any, batch_rows: int) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        for start in range(0, batch.num_rows, batch_rows):
            yield batch.slice(start, batch_rows)


def _reading(path: Path, batches: Any, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """``batches``, with a reading error (a bad number in a CSV, a corrupt page) named by file."""
    iterator = iter(batches)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except (pa.ArrowInvalid, OSError) as exc:
            raise InvalidInput(f"{path}: {exc}") from None
        if batch.num_rows:
            yield batch


class _Writer:
    """Parquet or CSV by the destination's suffix, into a temporary file until committed."""

    def __init__(self, destination: Path) -> None:
        suffix = destination.suffix.lower()
        if suffix not in (*PARQUET_SUFFIXES, *CSV_SUFFIXES):
            raise InvalidInput(
                f"--output {destination}: expected a .parquet (or .pq) or .csv file name"
            )
        if not destination.parent.is_dir():
            raise ServingError(
                f"--output {destination}: folder {destination.parent} does not exist"
            )
        self.destination = destination
        self.parquet = suffix in PARQUET_SUFFIXES
        self.partial = destination.with_name(f".{destination.name}.partial")
        self.schema: pa.Schema | None = None
        self.writer: Any = None

    def write(self, table: pa.Table) -> None:
        if self.writer is None:
            self.schema = table.schema
            if self.parquet:
                self.writer = pq.ParquetWriter(self.partial, self.schema)
            else:
                self.writer = pa_csv.CSVWriter(str(self.partial), self.schema)
        else:
            table = table.cast(self.schema)
        self.writer.write_table(table)

    def commit(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            os.replace(self.partial, self.destination)

    def discard(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self.partial.unlink(missing_ok=True)


class Progress:
    """A one-line progress report on a terminal: rows done (of how many, when known) and rows/s,
    redrawn in place at most five times a second. Silent when the stream is not a terminal."""

    def __init__(
        self,
        stream: IO[str] | None = None,
        total: int | None = None,
        enabled: bool | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.total = total
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.started = time.perf_counter()
        self.shown = 0.0
        self.drawn = False

    def update(self, rows: int, final: bool = False) -> None:
        now = time.perf_counter()
        if not self.enabled or (now - self.shown < 0.2 and not final):
            return
        self.shown = now
        rate = rows / max(now - self.started, 1e-9)
        done = f"{rows:,}"
        if self.total:
            done += f"/{self.total:,} rows ({100 * rows / self.total:.0f}%)"
        else:
            done += " rows"
        self.stream.write(f"\rmlp predict: {done}, {rate:,.0f} rows/s ")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False
