"""Torch DataLoaders for any adapter, single-process or across distributed ranks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class UnifiedLoader:
    """Makes the DataLoader of each split with one set of options.

    Training shuffles (seeded, so two runs see the same order); val and test never do. With
    ``distributed=True`` each rank gets a :class:`DistributedSampler` shard; call
    :meth:`set_epoch` at the start of every epoch so the shuffle changes between epochs.
    """

    def __init__(
        self,
        *,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 42,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        distributed: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        # persistent workers only exist when there are workers.
        self.persistent_workers = persistent_workers and num_workers > 0
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.collate_fn = collate_fn
        self.distributed = distributed
        self.rank = rank
        self.world_size = world_size
        self._samplers: list[DistributedSampler] = []

    def loader(self, dataset: Dataset, split: str) -> DataLoader:
        training = split == "train"
        shuffle = self.shuffle and training
        sampler = None
        generator = None
        if self.distributed:
            sampler = DistributedSampler(
                dataset,
                num_replicas=self.world_size,
                rank=self.rank,
                shuffle=shuffle,
                seed=self.seed,
                drop_last=self.drop_last and training,
            )
            self._samplers.append(sampler)
            shuffle = False  # the sampler shuffles
        elif shuffle:
            generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            drop_last=self.drop_last and training,
            collate_fn=self.collate_fn,
            generator=generator,
        )

    def set_epoch(self, epoch: int) -> None:
        for sampler in self._samplers:
            sampler.set_epoch(epoch)
