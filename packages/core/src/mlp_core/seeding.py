"""Seeding of every random number generator a run touches."""

from __future__ import annotations

import importlib
import importlib.util
import os
import random
import sys

import numpy as np


def _torch():
    # mlp-core does not depend on torch: seed it only where the environment has it.
    if "torch" in sys.modules:
        return sys.modules["torch"]
    if importlib.util.find_spec("torch") is None:
        return None
    return importlib.import_module("torch")


def seed_everything(seed: int, *, deterministic: bool = False) -> int:
    """Seed python, numpy and (when installed) torch on CPU and every GPU.

    ``deterministic`` also asks torch for deterministic kernels, so that a run repeats bit for bit
    on the same machine (at some cost in speed).
    """
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    random.seed(seed)
    np.random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    torch = _torch()
    if torch is not None:
        torch.manual_seed(seed)  # seeds CUDA generators too
        if deterministic:
            # cuBLAS needs a fixed workspace to be deterministic; must be set before CUDA work.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
    return seed
