"""A map-style dataset over preprocessed arrays that gathers a whole batch in one step.

Indexing one sample gives a dict of tensors like any dataset. A DataLoader also calls
``__getitems__`` with a batch of indices: that gathers every key with one fancy index instead of
a Python loop over samples, which is what makes a million-row epoch cheap. The gathered batch is
already a dict of stacked tensors, so the loader needs :func:`collate` (which the CSV adapter
sets) rather than torch's default collate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate


class TabularDataset(Dataset):
    """Samples ``{key: tensor}`` from arrays of equal length, as
    :meth:`~mlp_data.tabular.preprocessor.TabularPreprocessor.transform` returns them."""

    def __init__(self, arrays: Mapping[str, np.ndarray]) -> None:
        lengths = {key: len(value) for key, value in arrays.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"arrays of different lengths: {lengths}")
        self.tensors = {key: torch.from_numpy(np.ascontiguousarray(v)) for key, v in arrays.items()}
        self._length = next(iter(lengths.values()), 0)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: tensor[index] for key, tensor in self.tensors.items()}

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        rows = torch.as_tensor(indices, dtype=torch.long)
        return {key: tensor.index_select(0, rows) for key, tensor in self.tensors.items()}


def collate(data: Any) -> Any:
    """Pass a batch gathered by ``__getitems__`` through; stack a list of samples as usual."""
    if isinstance(data, Mapping):
        return dict(data)
    return default_collate(data)
