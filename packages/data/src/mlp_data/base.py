"""The adapter interface: load -> validate -> split -> fit preprocessing -> datasets and loaders.

An adapter turns one kind of source (a CSV file, an image folder, a YOLO dataset) into torch
datasets whose samples are dicts keyed by :mod:`mlp_core.batch`, plus a :class:`DatasetInfo`
that tells a model what it will be fed. ``prepare()`` runs the steps in order, once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.utils.data import DataLoader, Dataset

from mlp_core.config import DataSection, validate_section

Task = Literal["classification", "regression", "detection"]
SPLITS = ("train", "val", "test")


class SplitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    val: float = Field(default=0.15, ge=0, lt=1, description="fraction of rows for validation")
    test: float = Field(default=0.15, ge=0, lt=1, description="fraction of rows for testing")
    seed: int = Field(default=42, ge=0)
    stratify: bool = Field(default=True, description="keep class proportions (classification only)")

    @model_validator(mode="after")
    def _leaves_training_data(self) -> SplitConfig:
        if self.val + self.test >= 1:
            raise ValueError(f"val + test must be below 1, got {self.val} + {self.test}")
        return self


class AdapterConfig(DataSection):
    """Options every adapter has; each adapter subclasses it with its own."""

    split: SplitConfig = SplitConfig()
    shuffle: bool = True
    drop_last: bool = False
    pin_memory: bool = False
    persistent_workers: bool = False


@dataclass
class DatasetInfo:
    """What a model needs to know about the data it will be fed."""

    task: Task
    num_classes: int | None = None
    class_names: list[str] | None = None
    # Keyword arguments for the model's constructor that the data decides, e.g.
    # {"num_numeric": 7, "categorical_cardinalities": [4, 3]} or {"in_channels": 3}.
    model_inputs: dict[str, Any] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)

    def model_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.model_inputs)
        if self.task == "classification" and self.num_classes is not None:
            kwargs["num_classes"] = self.num_classes
        return kwargs

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class DataAdapter(ABC):
    """Base of every adapter. Subclasses set ``config_class`` and implement the steps."""

    config_class: ClassVar[type[AdapterConfig]] = AdapterConfig
    # Batches of variable-size samples (detection boxes) need their own collate function.
    collate_fn: ClassVar[Callable[[list[Any]], Any] | None] = None

    def __init__(self, config: AdapterConfig) -> None:
        self.config = config
        self._prepared = False

    @classmethod
    def from_config(cls, raw: dict[str, Any] | BaseModel, *, source: str | None = None):
        """Validate the ``data`` section with this adapter's own options model."""
        if isinstance(raw, BaseModel):
            raw = raw.model_dump(exclude_unset=False)
        return cls(validate_section(dict(raw), cls.config_class, "data", source=source))

    def prepare(self) -> DataAdapter:
        """Load, validate, split and fit preprocessing on the training split; runs once."""
        if not self._prepared:
            self.load()
            self.validate()
            self.split()
            self.fit()
            self._prepared = True
        return self

    @abstractmethod
    def load(self) -> None:
        """Read or index the source; raise ``DataError`` naming what is wrong and where."""

    def validate(self) -> None:  # noqa: B027 - optional step: not every source has a schema
        """Check the loaded data; raise ``DataError`` or drop bad rows, as configured."""

    @abstractmethod
    def split(self) -> None:
        """Assign every sample to train, val or test, seeded and deterministic."""

    def fit(self) -> None:  # noqa: B027 - optional step: not every source is preprocessed
        """Fit preprocessing on the training split only."""

    @abstractmethod
    def dataset(self, split: str) -> Dataset:
        """The torch dataset of one split; samples are dicts keyed by ``mlp_core.batch``."""

    @abstractmethod
    def info(self) -> DatasetInfo: ...

    def preprocessing(self) -> dict[str, Any]:
        """Every fitted preprocessing parameter, as JSON-ready data (the exporter reads it)."""
        return {}

    def loaders(
        self,
        splits: tuple[str, ...] = SPLITS,
        *,
        distributed: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> dict[str, DataLoader]:
        """DataLoaders of the prepared splits, with the options of the ``data`` section."""
        from mlp_data.loaders import UnifiedLoader

        self.prepare()
        config = self.config
        factory = UnifiedLoader(
            batch_size=config.batch_size,
            num_workers=config.num_workers,
            pin_memory=config.pin_memory,
            persistent_workers=config.persistent_workers,
            shuffle=config.shuffle,
            drop_last=config.drop_last,
            seed=config.split.seed,
            collate_fn=type(self).collate_fn,
            distributed=distributed,
            rank=rank,
            world_size=world_size,
        )
        return {split: factory.loader(self.dataset(split), split) for split in splits}
