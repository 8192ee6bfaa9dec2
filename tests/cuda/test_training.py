"""CUDA training in every precision: the run really used the GPU, and learns as on the CPU."""

from __future__ import annotations

import time

import pytest
import yaml
from cuda_helpers import PENGUINS, penguins_overrides

pytestmark = pytest.mark.cuda

# Penguins is separable enough that every precision reaches ~0.97 on the CPU; mixed precision may
# cost a misclassified test row or two (69 rows: 0.015 each), never more.
ACCURACY_MARGIN = 0.05


@pytest.mark.parametrize("precision", ["32", "bf16", "fp16"])
def test_penguins_trains_on_cuda(precision, cpu_penguins_accuracy, tmp_path):
    import torch

    from mlp_train.run import train

    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = train(
        PENGUINS,
        penguins_overrides("training.device=cuda", f"training.precision={precision}"),
        runs_root=tmp_path,
    )
    wall = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated()
    accuracy = result.metrics["test.accuracy"]
    print(
        f"\npenguins on {torch.cuda.get_device_name()} precision={precision}: test accuracy "
        f"{accuracy:.4f} (CPU {cpu_penguins_accuracy:.4f}), wall {wall:.1f}s, "
        f"peak GPU memory {peak / 2**20:.1f} MiB"
    )
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert saved["training"]["device"] == "cuda"
    assert str(saved["training"]["precision"]) == precision
    assert peak > 0, "nothing was allocated on the GPU: the run did not train there"
    assert accuracy >= cpu_penguins_accuracy - ACCURACY_MARGIN
