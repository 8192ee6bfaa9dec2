"""Where a run computes, and at what precision."""

from __future__ import annotations

import contextlib
import re

import torch
from torch.amp.grad_scaler import GradScaler

from mlp_core.errors import ConfigError

_CUDA_INDEX = re.compile(r"^cuda:(\d+)$")


def select_device(name: str) -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or _CUDA_INDEX.match(name):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"training.device: {name!r} asked for, but torch sees no CUDA device",
                hint="Use device auto or cpu, or install a CUDA build of torch.",
            )
        match = _CUDA_INDEX.match(name)
        if match and int(match.group(1)) >= torch.cuda.device_count():
            raise ConfigError(
                f"training.device: {name!r}, but only {torch.cuda.device_count()} CUDA "
                "device(s) exist"
            )
        return torch.device(name)
    raise ConfigError(f"training.device: expected auto, cpu, cuda or cuda:N, got {name!r}")


class Precision:
    """Autocast for the forward pass and a grad scaler for fp16 (a no-op for 32-bit)."""

    def __init__(self, precision: str, device: torch.device) -> None:
        if precision == "fp16" and device.type != "cuda":
            raise ConfigError(
                "training.precision: fp16 mixed precision needs a CUDA device",
                hint="Use precision bf16 on the CPU.",
            )
        self.precision = precision
        self.device = device
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        # Only fp16 underflows without loss scaling; bf16 has fp32's range.
        self.scaler = GradScaler(device.type, enabled=precision == "fp16")

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)
