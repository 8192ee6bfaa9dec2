"""DDP over NCCL with every GPU of the machine: torch's collectives, then `mlp train` itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cuda_helpers import PENGUINS, ROOT, penguins_overrides

pytestmark = pytest.mark.cuda

WORKER = Path(__file__).with_name("ddp_worker.py")
TIMEOUT_S = 600  # a hung collective ends the test, never the session


def torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", *args]  # fmt: skip


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def test_ddp_over_nccl_on_every_gpu():
    gpus = gpu_count()
    start = time.perf_counter()
    proc = subprocess.run(
        torchrun(gpus, str(WORKER), "--backend", "nccl"),
        capture_output=True, text=True, timeout=TIMEOUT_S, cwd=ROOT,
    )  # fmt: skip
    wall = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("DDP_REPORT "))
    report = json.loads(line.removeprefix("DDP_REPORT "))
    print(f"\nDDP over {report['backend']} on {gpus} GPU(s) {report['devices']}: loss "
          f"{report['first_loss']:.3f} -> {report['last_loss']:.3f}, rank spread "
          f"{report['param_spread']:.1e}, wall {wall:.1f}s")  # fmt: skip
    assert report["backend"] == "nccl"
    assert report["world_size"] == gpus
    assert report["rank_sum"] == gpus * (gpus - 1) / 2  # the all-reduce summed every rank's id
    assert report["param_spread"] == 0.0  # DDP averaged the gradients: the ranks stay identical
    assert report["last_loss"] < report["first_loss"]


def test_mlp_train_under_torchrun_uses_nccl(tmp_path):
    gpus = gpu_count()
    if gpus < 2:
        pytest.skip(
            f"needs 2+ GPUs for a multi-process `mlp train` (this machine has {gpus}): with one "
            "GPU torchrun starts a single process, which never forms a process group"
        )
    overrides = penguins_overrides("training.device=cuda", "training.epochs=5")
    sets = [arg for override in overrides for arg in ("--set", override)]
    command = torchrun(gpus, "-m", "mlp_core.cli", "train", str(PENGUINS), *sets,
                       "--run-dir", str(tmp_path))  # fmt: skip
    proc = subprocess.run(
        command, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=ROOT,
        env={**os.environ, "NCCL_DEBUG": "INFO"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "NCCL INFO" in proc.stdout + proc.stderr, "the ranks never initialised NCCL"
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    print(
        f"\nmlp train under torchrun on {gpus} GPUs: test accuracy {metrics['test.accuracy']:.4f}"
    )
    assert metrics["test.accuracy"] >= 0.9
