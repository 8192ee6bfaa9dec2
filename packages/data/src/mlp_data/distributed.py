"""Which shard of the data this process reads: its rank and the world size.

Loaders take both as arguments, so that a test or a launcher can place a process by hand;
either one left out comes from ``torch.distributed`` when a process group is initialised.
"""

from __future__ import annotations

import torch.distributed as dist


def distributed_place(
    rank: int | None = None, world_size: int | None = None, *, required: bool = False
) -> tuple[int, int]:
    """``(rank, world_size)``: the arguments, else ``torch.distributed``'s, else ``(0, 1)``.

    ``required``: a missing value without a process group is an error instead of ``(0, 1)``,
    for callers that were asked to shard and must not silently read everything.
    """
    if rank is None or world_size is None:
        if dist.is_available() and dist.is_initialized():
            rank = dist.get_rank() if rank is None else rank
            world_size = dist.get_world_size() if world_size is None else world_size
        elif required:
            raise ValueError("distributed=True needs rank and world_size, or an initialised group")
        else:
            rank, world_size = rank or 0, world_size or 1
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    return rank, world_size
