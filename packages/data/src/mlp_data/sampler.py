"""A sampler whose order is a pure function of (seed, epoch), so a run can resume mid-epoch.

torch's RandomSampler draws its order from a generator whose state moves on with every epoch,
which a checkpoint would have to capture at exactly the right moment. Here the order of epoch
``e`` is ``randperm(n, seed + e)``: a resumed run rebuilds it from two integers and skips the
samples it has already seen. With ``world_size > 1`` each rank takes every ``world_size``-th
index of the same order (as DistributedSampler does). For training it is padded so that every
rank gets the same number of samples and steps, and no rank waits forever at the last batch;
evaluation (``pad=False``) needs no lock-step, so each sample is seen exactly once and the
metrics summed over the ranks are those of the whole split.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    def __init__(
        self,
        length: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        pad: bool = True,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.length = length
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.pad = pad
        self.epoch = 0
        self.skip = 0  # samples of this rank's share already consumed in the current epoch

    def set_epoch(self, epoch: int, *, skip: int = 0) -> None:
        """Start ``epoch``; ``skip`` the first samples of it (those seen before a resume)."""
        self.epoch = epoch
        self.skip = skip

    def per_rank(self) -> int:
        if self.drop_last:
            return self.length // self.world_size
        if not self.pad:  # the ranks below length % world_size take one sample more
            return len(range(self.rank, self.length, self.world_size))
        return -(-self.length // self.world_size)  # ceil: the short ranks get padding

    def order(self) -> list[int]:
        """This rank's whole order for the current epoch, before skipping."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            indices = torch.randperm(self.length, generator=generator).tolist()
        else:
            indices = list(range(self.length))
        if not self.pad and not self.drop_last:
            return indices[self.rank :: self.world_size]
        total = self.per_rank() * self.world_size
        if total > len(indices) and indices:
            # Repeat from the start to pad, as DistributedSampler does.
            indices = (indices * (total // len(indices) + 1))[:total]
        else:
            indices = indices[:total]
        return indices[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.skip :])

    def __len__(self) -> int:
        return self.per_rank() - self.skip
