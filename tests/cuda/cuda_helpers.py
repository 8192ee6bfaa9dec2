"""What the cuda tests share: the examples' paths, the GPU probe and the `mlp` command."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PENGUINS = ROOT / "examples" / "penguins"
PENGUINS_CSV = ROOT / "examples" / "data" / "penguins.csv"
DIGITS = ROOT / "examples" / "digits"
DIGITS_DATA = ROOT / "examples" / "data" / "digits"
# Runs are tracked in their own folder (no MLflow store) and print no progress bars.
QUIET = ["training.progress=none", "training.tracking.backend=local"]


@functools.cache
def no_gpu_reason() -> str | None:
    """Why the cuda tests cannot run here, or None when an NVIDIA GPU is usable."""
    try:
        import torch
    except ImportError:
        return "needs an NVIDIA GPU and torch; torch is not installed"
    if not torch.cuda.is_available():
        return "needs an NVIDIA GPU; torch.cuda.is_available() is False on this machine"
    return None


def mlp_command(*args: str) -> list[str]:
    """The `mlp` command of this interpreter's environment (a workspace or the GPU machine's)."""
    return [sys.executable, "-m", "mlp_core.cli", *args]


def penguins_overrides(*extra: str) -> list[str]:
    return [f"data.path={PENGUINS_CSV}", *QUIET, *extra]
