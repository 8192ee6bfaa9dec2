"""Torch DataLoaders for any adapter, single-process or across distributed ranks."""

from __future__ import annotations

from collections.abc import Callable, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from mlp_data.distributed import distributed_place
from mlp_data.sampler import EpochSampler


class UnifiedLoader:
    """Makes the DataLoader of each split with one set of options.

    Every split is read through an :class:`~mlp_data.sampler.EpochSampler`: training shuffles
    with an order that depends only on (seed, epoch), so two runs see the same order and a
    resumed run can skip to where it stopped; val and test never shuffle. With
    ``distributed=True`` each rank reads its own shard (rank and world size from the arguments,
    else from ``torch.distributed``). Call :meth:`set_epoch` at the start of every epoch.
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
        self._samplers: list[EpochSampler] = []

    def loader(self, dataset: Dataset, split: str) -> DataLoader:
        if not isinstance(dataset, Sized):
            raise TypeError(f"{type(dataset).__name__} has no length; a sampler needs one")
        training = split == "train"
        rank, world_size = self._place()
        sampler = EpochSampler(
            len(dataset),
            shuffle=self.shuffle and training,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
            drop_last=self.drop_last and training and world_size > 1,
            # Only training steps in lock-step across the ranks; padding val or test would
            # count the repeated samples twice in the metrics summed over the ranks.
            pad=training,
        )
        self._samplers.append(sampler)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            drop_last=self.drop_last and training,
            collate_fn=self.collate_fn,
            # Worker seeds come from this generator, never from the global RNG, so creating an
            # epoch's iterator does not move the RNG state a checkpoint records.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _place(self) -> tuple[int, int]:
        if not self.distributed:
            return 0, 1
        return distributed_place(self.rank, self.world_size, required=True)

    def set_epoch(self, epoch: int) -> None:
        for sampler in self._samplers:
            sampler.set_epoch(epoch)
