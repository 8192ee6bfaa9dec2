"""One rank of the DDP check, launched by torchrun (tests/cuda/test_ddp.py): a small model trained
a few steps with DistributedDataParallel, each rank on its own GPU and its own data.

Rank 0 prints one JSON line: the backend, the world size, the all-reduce of the ranks' ids and the
largest parameter difference between the ranks after training (DDP keeps them identical).
``--backend gloo`` runs the same on CPUs, so the script itself can be tried without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

STEPS = 20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="nccl", choices=["nccl", "gloo"])
    backend = parser.parse_args().backend
    local_rank = int(os.environ["LOCAL_RANK"])
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()

    ranks = torch.tensor([float(rank)], device=device)
    dist.all_reduce(ranks)

    torch.manual_seed(0)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    ddp = DistributedDataParallel(
        model.to(device), device_ids=[local_rank] if backend == "nccl" else None
    )
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.5)
    # A learnable task: the class a fixed linear teacher gives; each rank draws its own batches.
    teacher = torch.randn(16, 4, generator=torch.Generator().manual_seed(7))
    generator = torch.Generator().manual_seed(1000 + rank)
    losses = []
    for _ in range(STEPS):
        inputs = torch.randn(64, 16, generator=generator)
        targets = (inputs @ teacher).argmax(dim=1)
        loss = torch.nn.functional.cross_entropy(ddp(inputs.to(device)), targets.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    spread = max(float((g - gathered[0]).abs().max()) for g in gathered)
    if rank == 0:
        report = {
            "backend": dist.get_backend(),
            "world_size": world,
            "rank_sum": float(ranks.item()),
            "param_spread": spread,
            "first_loss": losses[0],
            "last_loss": losses[-1],
            "devices": [torch.cuda.get_device_name(i) for i in range(world)]
            if backend == "nccl"
            else [],
        }
        print("DDP_REPORT " + json.dumps(report), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
