"""``data.adapter: csv``: tabular classification and regression from a CSV or Parquet file.

The file is read whole (pandas, pyarrow engine), checked against a row schema, split, and
preprocessed by a :class:`TabularPreprocessor` fitted on the training rows. With
``streaming.enabled`` nothing is read whole: the preprocessor is fitted in one bounded pass and
each split is a :class:`LargeScaleLoader` reading the file piece by piece.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.utils.data import DataLoader, Dataset

from mlp_core.errors import DataError
from mlp_core.tabular_spec import PreprocessingOptions, category_key
from mlp_data.base import SPLITS, AdapterConfig, DataAdapter, DatasetInfo
from mlp_data.distributed import distributed_place
from mlp_data.registry import register_adapter
from mlp_data.splits import split_indices
from mlp_data.tabular.dataset import TabularDataset, collate
from mlp_data.tabular.files import numeric_with_bad_values, read_header, read_table
from mlp_data.tabular.pieces import DEFAULT_BLOCK_BYTES, DEFAULT_CHUNK_BYTES, iter_batches
from mlp_data.tabular.preprocessor import TabularPreprocessor, sorted_categories
from mlp_data.tabular.schema import (
    DEFAULT_MAX_REPORTED,
    OnInvalid,
    SchemaValidator,
    load_schema,
    row_schema,
)
from mlp_data.tabular.streaming import (
    LargeScaleLoader,
    StreamingTabularDataset,
    TableStream,
    fit_streaming,
)

# An integer target with at most this many distinct values is taken for class labels.
AUTO_MAX_CLASSES = 20


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ValidationConfig(_Options):
    schema_file: Path | None = Field(
        default=None, description="JSON/YAML row schema; else generated"
    )
    on_invalid: OnInvalid = "fail"
    max_reported: int = Field(default=DEFAULT_MAX_REPORTED, gt=0)


class StreamingConfig(_Options):
    enabled: bool = False
    chunk_bytes: int = Field(
        default=DEFAULT_CHUNK_BYTES, gt=0, description="CSV bytes per shared piece"
    )
    block_bytes: int = Field(
        default=DEFAULT_BLOCK_BYTES, gt=0, description="CSV bytes per read batch"
    )
    fit_rows: int = Field(default=100_000, gt=0, description="training rows sampled to fit on")


class CSVConfig(AdapterConfig):
    adapter: str = "csv"
    # Required here: narrower than DataSection's optional path. Sound at run time, because
    # validate_assignment checks an assignment with this class's type, which pyright cannot see.
    path: Path = Field(..., description="CSV, or Parquet (.parquet/.pq) file")  # pyright: ignore[reportIncompatibleVariableOverride]
    target: str
    task: Literal["classification", "regression", "auto"] = "auto"
    numeric: list[str] | None = None
    categorical: list[str] | None = None
    drop: list[str] = Field(default_factory=list)
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    # The options of the saved preprocessing document itself: one definition for both.
    preprocessing: PreprocessingOptions = PreprocessingOptions()
    validation: ValidationConfig = ValidationConfig()
    streaming: StreamingConfig = StreamingConfig()

    @model_validator(mode="after")
    def _columns_are_consistent(self) -> CSVConfig:
        numeric, categorical = self.numeric or [], self.categorical or []
        both = sorted(set(numeric) & set(categorical))
        if both:
            raise ValueError(f"columns {both} are listed as both numeric and categorical")
        if self.target in {*numeric, *categorical, *self.drop}:
            raise ValueError(f"target {self.target!r} is also listed as a feature or dropped")
        return self


@register_adapter("csv")
class CSVAdapter(DataAdapter):
    """Tabular data from one CSV or Parquet file."""

    config_class = CSVConfig
    collate_fn = staticmethod(collate)
    config: CSVConfig

    def __init__(self, config: CSVConfig) -> None:
        super().__init__(config)
        self.frame: pd.DataFrame | None = None
        self.numeric: list[str] = []
        self.categorical: list[str] = []
        self.task: Literal["classification", "regression"] = "classification"
        self.validator: SchemaValidator | None = None
        self.classes: list[str] | None = None
        self.indices: dict[str, np.ndarray] = {}
        self.preprocessor: TabularPreprocessor | None = None
        self.sizes: dict[str, int] = {}
        self._datasets: dict[str, Dataset] = {}
        self._user_schema: dict[str, Any] | None = None

    @property
    def source(self) -> str:
        return str(self.config.path)

    # -- load -------------------------------------------------------------------------------

    def load(self) -> None:
        config = self.config
        header = read_header(config.path, delimiter=config.delimiter)
        if config.target not in header:
            raise DataError(
                f"{config.path}: target column {config.target!r} not found; the columns are "
                f"{header}",
                hint="Set data.target to one of the columns listed.",
            )
        listed = [*(config.numeric or []), *(config.categorical or [])]
        absent = [c for c in [*listed, *config.drop] if c not in header]
        if absent:
            raise DataError(f"{config.path}: no column(s) {absent}; the columns are {header}")
        if config.validation.schema_file is not None:
            self._user_schema = load_schema(config.validation.schema_file)
        if config.numeric is not None or config.categorical is not None:
            columns = [config.target, *listed]
        else:
            columns = [c for c in header if c not in config.drop]
        if config.streaming.enabled:
            sample = _first_batch(config, columns)
        else:
            sample = self.frame = read_table(
                config.path, columns=columns, delimiter=config.delimiter
            )
        self._resolve_columns(sample, columns)

    def _resolve_columns(self, frame: pd.DataFrame, columns: list[str]) -> None:
        config = self.config
        schema_numeric = (
            set(SchemaValidator(self._user_schema).numeric_columns())
            if (self._user_schema)
            else set()
        )
        if config.numeric is not None or config.categorical is not None:
            self.numeric, self.categorical = (
                list(config.numeric or []),
                list(config.categorical or []),
            )
        else:
            features = [c for c in columns if c != config.target]
            self.numeric = [c for c in features if _is_number(frame[c]) or c in schema_numeric]
            self.categorical = [c for c in features if c not in self.numeric]
        self.task = _infer_task(frame[config.target]) if config.task == "auto" else config.task

    # -- validate ---------------------------------------------------------------------------

    def validate(self) -> None:
        config = self.config
        schema = self._user_schema or row_schema(
            self.numeric, self.categorical, target=config.target, task=self.task,
            title=f"row of {config.path.name}",
        )  # fmt: skip
        self.validator = SchemaValidator(
            schema,
            target=config.target,
            on_invalid=config.validation.on_invalid,
            max_reported=config.validation.max_reported,
            source=str(config.validation.schema_file or "generated row schema"),
        )
        if self.frame is None:  # streaming: each batch is validated as it is read
            return
        frame = self.frame
        numbers = [*self.numeric, *([config.target] if self.task == "regression" else [])]
        for name in numbers:
            # Text in a number column stays in place so that the validator names row and value.
            frame[name], _ = numeric_with_bad_values(frame[name])
        frame = self.validator.apply(frame, source=self.source)
        for name in numbers:
            frame[name] = frame[name].astype(np.float64)
        self.frame = frame
        if self.task == "classification":
            self.classes = sorted_categories(frame[config.target])

    # -- split and fit ----------------------------------------------------------------------

    def split(self) -> None:
        if self.frame is None:
            return  # streaming: rows are assigned by a hash of their place as they are read
        labels = None
        if self.task == "classification" and self.classes is not None:
            # Class indices, found once per distinct value rather than once per row.
            codes, uniques = pd.factorize(self.frame[self.config.target])
            # category_key gives None only for a missing value, which factorize leaves out.
            index: dict[str | None, int] = {name: i for i, name in enumerate(self.classes)}
            labels = np.array([index[category_key(u)] for u in uniques], dtype=np.int64)[codes]
        self.indices = split_indices(len(self.frame), self.config.split, labels=labels)
        self.sizes = {name: len(rows) for name, rows in self.indices.items()}

    def fit(self) -> None:
        config = self.config
        self.preprocessor = TabularPreprocessor(
            self.numeric,
            self.categorical,
            target=config.target,
            task=self.task,
            options=config.preprocessing,
        )
        if self.frame is not None:
            train = self.frame.iloc[self.indices["train"]]
            self.preprocessor.fit(train, classes=self.classes)
            return
        self.sizes = fit_streaming(
            self._stream(),
            self.preprocessor,
            sample_rows=config.streaming.fit_rows,
            seed=config.split.seed,
            split_config=config.split,
            validator=self.validator,
        )
        self.classes = self.preprocessor.target_classes

    # -- what training reads ----------------------------------------------------------------

    def dataset(self, split: str) -> Dataset:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.prepare()
        if split not in self._datasets:
            self._datasets[split] = self._make_dataset(split)
        return self._datasets[split]

    def _make_dataset(self, split: str) -> Dataset:
        if self.frame is None:
            return self._stream_dataset(split)
        assert self.preprocessor is not None
        rows = self.frame.iloc[self.indices[split]]
        return TabularDataset(self.preprocessor.transform(rows, source=self.source))

    def _stream_dataset(
        self, split: str, *, rank: int | None = None, world_size: int | None = None
    ) -> StreamingTabularDataset:
        assert self.preprocessor is not None
        training = split == "train"
        return StreamingTabularDataset(
            self._stream(),
            self.preprocessor,
            batch_size=self.config.batch_size,
            split=split,
            split_config=self.config.split,
            shuffle=self.config.shuffle and training,
            seed=self.config.split.seed,
            drop_last=self.config.drop_last and training,
            rank=rank,
            world_size=world_size,
            validator=self.validator,
        )

    def loaders(
        self,
        splits: tuple[str, ...] = SPLITS,
        *,
        distributed: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> dict[str, DataLoader]:
        self.prepare()
        if self.frame is not None:
            return super().loaders(
                splits, distributed=distributed, rank=rank, world_size=world_size
            )
        # A stream shards itself across workers and ranks; it needs no sampler.
        place = distributed_place(rank, world_size) if distributed else (0, 1)
        return {
            split: LargeScaleLoader(
                self._stream_dataset(split, rank=place[0], world_size=place[1]),
                num_workers=self.config.num_workers,
                pin_memory=self.config.pin_memory,
                persistent_workers=self.config.persistent_workers,
            )
            for split in splits
        }

    def info(self) -> DatasetInfo:
        self.prepare()
        assert self.preprocessor is not None
        return DatasetInfo(
            task=self.task,
            num_classes=len(self.classes) if self.classes is not None else None,
            class_names=list(self.classes) if self.classes is not None else None,
            model_inputs=self.preprocessor.model_inputs(),
            sizes=dict(self.sizes),
        )

    def preprocessing(self) -> dict[str, Any]:
        self.prepare()
        assert self.preprocessor is not None and self.validator is not None
        return {
            "type": "tabular",
            "preprocessor": self.preprocessor.to_dict(),
            "row_schema": self.validator.schema,
        }

    def _stream(self) -> TableStream:
        config = self.config
        return TableStream(
            config.path,
            columns=[config.target, *self.numeric, *self.categorical],
            column_types=_arrow_types(self.numeric, self.categorical, config.target, self.task),
            delimiter=config.delimiter,
            chunk_bytes=config.streaming.chunk_bytes,
            block_bytes=config.streaming.block_bytes,
        )


def _first_batch(config: CSVConfig, columns: list[str]) -> pd.DataFrame:
    """The first record batch: enough to infer column kinds and the task of a stream."""
    for record_batch in iter_batches(
        config.path,
        columns=columns,
        delimiter=config.delimiter,
        chunk_bytes=config.streaming.chunk_bytes,
        block_bytes=config.streaming.block_bytes,
    ):
        if record_batch.num_rows:
            return record_batch.to_pandas()
    raise DataError(f"{config.path}: has a header but no data rows")


def _arrow_types(
    numeric: list[str], categorical: list[str], target: str, task: str
) -> dict[str, pa.DataType]:
    # Fixed types: each piece of a stream would otherwise infer its own (int here, float there).
    types = dict.fromkeys(numeric, pa.float64())
    types.update(dict.fromkeys(categorical, pa.string()))
    types[target] = pa.float64() if task == "regression" else pa.string()
    return types


def _is_number(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _infer_task(target: pd.Series) -> Literal["classification", "regression"]:
    """Text, booleans and integers with few distinct values are labels; other numbers are not."""
    if not _is_number(target):
        return "classification"
    values = target.dropna().to_numpy(dtype=np.float64)
    if (
        values.size
        and np.all(np.mod(values, 1) == 0)
        and np.unique(values).size <= AUTO_MAX_CLASSES
    ):
        return "classification"
    return "regression"
