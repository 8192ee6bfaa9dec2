"""Multi-process training on torch.distributed: the process group `torchrun` describes.

``torchrun --nproc-per-node=N`` (or a multi-node launch) sets RANK, WORLD_SIZE, LOCAL_RANK and
the rendezvous address; :func:`from_env` reads them. gloo on the CPU, nccl on GPUs. Only rank 0
writes files, logs and tracks; the others compute and wait at barriers.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

# Ample for gloo's worker thread to drop the last collective's tensors (it takes microseconds).
_COLLECTIVE_CLEANUP_S = 0.2


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistributedContext:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        return cls(
            rank=int(os.environ["RANK"]),
            world_size=world_size,
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )

    def device(self, requested: torch.device) -> torch.device:
        """Each process on a node takes its own GPU."""
        if self.enabled and requested.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return requested

    def init(self, device: torch.device) -> None:
        if not self.enabled or dist.is_initialized():
            return
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, timeout=timedelta(minutes=10))

    def barrier(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.barrier()

    def broadcast_flag(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when any rank says True (a stop or an interrupt)."""
        if not (self.enabled and dist.is_initialized()):
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def shutdown(self) -> None:
        """Tear the group down once every rank is done (rank 0 finishes last: it evaluates,
        saves and tracks); a rank destroying its group while a peer still works can hang.

        gloo's worker thread frees a finished collective's tensors after the caller has moved
        on, and needs the GIL for that; freeing the group (here, or when the DDP reducer that
        holds it is collected) joins that thread while holding the GIL. Right after a
        collective the two deadlock, so this thread first sleeps, which releases the GIL.
        """
        if self.enabled and dist.is_initialized():
            dist.barrier()
            time.sleep(_COLLECTIVE_CLEANUP_S)
            dist.destroy_process_group()
