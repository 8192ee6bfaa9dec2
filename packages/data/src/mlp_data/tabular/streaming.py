"""Streaming a table bigger than memory into training batches, across workers and ranks.

:class:`StreamingTabularDataset` is an ``IterableDataset`` over the pieces of one file
(:mod:`mlp_data.tabular.pieces`). Pieces are dealt round-robin to the ``world_size x num_workers``
readers, rank-major, so each row is read by exactly one reader per epoch; ``set_epoch`` reshuffles
which reader gets which piece (seeded), and rows are shuffled within each record batch. The rank
and world size come from the arguments, else from ``torch.distributed`` when it is initialised.

Ranks may end an epoch with different numbers of batches (nothing is padded or dropped, so that
every sample is seen exactly once); DDP training loops over a stream should use
``torch.distributed.algorithms.Join`` or stop on the shortest rank.

Splits of a stream are decided row by row by a seeded hash of the row's place in the file (its
piece and its position inside the piece), so they need no index in memory; they are not
stratified, and changing ``chunk_bytes`` of a CSV moves rows between splits.

:func:`fit_streaming` fits a :class:`TabularPreprocessor` in one bounded pass: a uniform random
sample of at most ``sample_rows`` training rows (priority sampling over the batches), with the
class labels collected from every row.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mlp_core.tabular_spec import category_key
from mlp_data.base import SplitConfig
from mlp_data.distributed import distributed_place
from mlp_data.tabular.pieces import (
    DEFAULT_BATCH_ROWS,
    DEFAULT_BLOCK_BYTES,
    DEFAULT_CHUNK_BYTES,
    Piece,
    plan_pieces,
    read_piece,
)
from mlp_data.tabular.preprocessor import TabularPreprocessor, sorted_categories
from mlp_data.tabular.schema import SchemaValidator

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
_MASK64 = (1 << 64) - 1


def row_splits(piece: int, rows: np.ndarray, config: SplitConfig) -> np.ndarray:
    """Split codes (0 train, 1 val, 2 test) of the rows at positions ``rows`` of a piece."""
    keys = (np.uint64(piece) << np.uint64(32)) + np.asarray(rows, dtype=np.uint64)
    uniform = _splitmix64(keys ^ np.uint64((config.seed * 0x9E3779B97F4A7C15) & _MASK64))
    share = (uniform >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    codes = np.zeros(len(keys), dtype=np.int8)
    codes[share < config.test + config.val] = SPLIT_CODES["val"]
    codes[share < config.test] = SPLIT_CODES["test"]
    return codes


def _splitmix64(x: np.ndarray) -> np.ndarray:
    # A well-mixed 64-bit hash: neighbouring rows get unrelated values.
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


class TableStream:
    """Where and how to read one file: the options every streaming reader shares."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        columns: list[str] | None = None,
        column_types: dict[str, pa.DataType] | None = None,
        delimiter: str = ",",
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        batch_rows: int = DEFAULT_BATCH_ROWS,
    ) -> None:
        self.path = Path(path)
        self.columns = columns
        self.column_types = column_types
        self.delimiter = delimiter
        self.chunk_bytes = chunk_bytes
        self.block_bytes = block_bytes
        self.batch_rows = batch_rows

    def pieces(self) -> list[Piece]:
        return plan_pieces(self.path, chunk_bytes=self.chunk_bytes)

    def frames(
        self, piece: Piece, split: str | None = None, split_config: SplitConfig | None = None
    ) -> Iterator[pd.DataFrame]:
        """The piece as frames of one record batch each, keeping only ``split``'s rows.

        Frames are indexed by the row's position in the piece, which places it in a split.
        """
        first_row = 0
        for record_batch in read_piece(
            self.path,
            piece,
            columns=self.columns,
            column_types=self.column_types,
            delimiter=self.delimiter,
            block_bytes=self.block_bytes,
            batch_rows=self.batch_rows,
        ):
            frame = record_batch.to_pandas()
            count = len(frame)
            frame.index = pd.RangeIndex(first_row, first_row + count)
            if split is not None and split_config is not None:
                codes = row_splits(piece.index, frame.index.to_numpy(), split_config)
                frame = frame[codes == SPLIT_CODES[split]]
            first_row += count
            if len(frame):
                yield frame


def fit_streaming(
    stream: TableStream,
    preprocessor: TabularPreprocessor,
    *,
    sample_rows: int = 100_000,
    seed: int = 0,
    split_config: SplitConfig | None = None,
    validator: SchemaValidator | None = None,
) -> dict[str, int]:
    """Fit ``preprocessor`` on a sample of the training rows in one pass; return split sizes."""
    rng = np.random.default_rng(seed)
    sample: pd.DataFrame | None = None
    priorities = np.empty(0)
    labels: set[str] = set()
    sizes = dict.fromkeys(SPLIT_CODES, 0)
    target = preprocessor.target
    for piece in stream.pieces():
        for frame in stream.frames(piece):
            if validator is not None:
                frame = validator.apply(frame, source=f"{stream.path} (piece {piece.index})")
            codes = (
                row_splits(piece.index, frame.index.to_numpy(), split_config)
                if split_config is not None
                else np.zeros(len(frame), dtype=np.int8)
            )
            for name, code in SPLIT_CODES.items():
                sizes[name] += int((codes == code).sum())
            if target is not None and preprocessor.task == "classification":
                labels.update(k for k in map(category_key, frame[target].unique()) if k)
            train = frame.loc[codes == SPLIT_CODES["train"]]
            # Priority sampling: keep the rows with the smallest random keys, a uniform sample.
            keys = rng.random(len(train))
            sample = train if sample is None else pd.concat([sample, train], ignore_index=True)
            priorities = np.concatenate([priorities, keys])
            if len(sample) > sample_rows:
                keep = np.sort(np.argpartition(priorities, sample_rows)[:sample_rows])
                sample, priorities = sample.iloc[keep].reset_index(drop=True), priorities[keep]
    if sample is None or sample.empty:
        raise ValueError(f"{stream.path}: no training rows to fit the preprocessor on")
    classes = sorted_categories(list(labels)) if labels else None
    preprocessor.fit(sample, classes=classes)
    return sizes


class StreamingTabularDataset(IterableDataset):
    """Preprocessed batches (dicts of tensors) of one split of a file, read piece by piece."""

    def __init__(
        self,
        stream: TableStream,
        preprocessor: TabularPreprocessor,
        *,
        batch_size: int = 256,
        split: str | None = None,
        split_config: SplitConfig | None = None,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        validator: SchemaValidator | None = None,
    ) -> None:
        if split is not None and split not in SPLIT_CODES:
            raise ValueError(f"split must be one of {list(SPLIT_CODES)}, got {split!r}")
        self.stream = stream
        self.preprocessor = preprocessor
        self.batch_size = batch_size
        self.split = split
        self.split_config = split_config
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.rank, self.world_size = distributed_place(rank, world_size)
        self.validator = validator
        # Shared memory, so that persistent workers (copies of this dataset) see set_epoch.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def my_pieces(self, worker: int = 0, num_workers: int = 1) -> list[Piece]:
        """The pieces this rank's ``worker`` reads this epoch."""
        pieces = self.stream.pieces()
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(pieces))
            pieces = [pieces[i] for i in order]
        readers = self.world_size * num_workers
        return pieces[self.rank * num_workers + worker :: readers]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        pending: list[dict[str, np.ndarray]] = []
        held = 0
        for piece in self.my_pieces(worker, num_workers):
            rng = np.random.default_rng([self.seed, self.epoch, piece.index])
            for frame in self.stream.frames(piece, self.split, self.split_config):
                if self.validator is not None:
                    frame = self.validator.apply(
                        frame, source=f"{self.stream.path} (piece {piece.index})"
                    )
                arrays = self.preprocessor.transform(frame, source=str(self.stream.path))
                if self.shuffle:
                    order = rng.permutation(len(frame))
                    arrays = {key: value[order] for key, value in arrays.items()}
                pending.append(arrays)
                held += len(frame)
                while held >= self.batch_size:
                    batch, pending, held = _take(pending, self.batch_size)
                    yield batch
        if held and not self.drop_last:
            yield _take(pending, held)[0]


def _take(
    pending: list[dict[str, np.ndarray]], count: int
) -> tuple[dict[str, torch.Tensor], list[dict[str, np.ndarray]], int]:
    """The first ``count`` rows of the pending arrays as tensors, and what is left."""
    merged = {key: np.concatenate([part[key] for part in pending]) for key in pending[0]}
    batch = {
        key: torch.from_numpy(np.ascontiguousarray(value[:count])) for key, value in merged.items()
    }
    rest = len(next(iter(merged.values()))) - count
    left = [{key: value[count:] for key, value in merged.items()}] if rest else []
    return batch, left, rest


class LargeScaleLoader(DataLoader):
    """A DataLoader over a :class:`StreamingTabularDataset`: batches are formed by the dataset.

    Extra keyword arguments go to ``DataLoader`` (``multiprocessing_context``, ``timeout``...).
    """

    def __init__(
        self,
        dataset: StreamingTabularDataset,
        *,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        **kwargs: Any,
    ) -> None:
        self.stream_dataset = dataset
        super().__init__(
            dataset,
            batch_size=None,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers and num_workers > 0,
            **kwargs,
        )

    def set_epoch(self, epoch: int) -> None:
        self.stream_dataset.set_epoch(epoch)
