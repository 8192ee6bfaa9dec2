"""Helpers for the tests: tiny arguments for every registered model, and batches for them."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from mlp_core.batch import TARGET
from mlp_models import BaseModel, create_model
from mlp_models.vision import BACKBONES

TINY_IMAGE = 32


def tiny_kwargs(name: str) -> dict[str, Any]:
    """The smallest useful arguments for a registered model, so the suite stays fast."""
    if name in BACKBONES:
        return {"num_classes": 3, "image_size": TINY_IMAGE}
    if name == "tabular_mlp":
        return {
            "num_numeric": 4,
            "categorical_cardinalities": [3, 5],
            "num_classes": 3,
            "hidden_sizes": [16, 8],
        }
    pytest.fail(f"model {name!r} is registered but the tests have no tiny arguments for it")


def tiny_model(name: str) -> BaseModel:
    torch.manual_seed(0)
    return create_model(name, **tiny_kwargs(name))


def make_batch(model: BaseModel, batch_size: int = 2, seed: int = 1) -> dict[str, torch.Tensor]:
    """A batch dict with every input the model reads and a target fitting its task."""
    spec = model.signature()
    batch = dict(zip(spec.input_names, model.example_inputs(batch_size)))
    generator = torch.Generator().manual_seed(seed)
    width = spec.outputs[0].shape[1]
    if model.task == "multiclass":
        batch[TARGET] = torch.randint(0, width, (batch_size,), generator=generator)
    elif model.task == "binary":
        batch[TARGET] = torch.randint(0, 2, (batch_size,), generator=generator)
    else:
        shape = (batch_size,) if width == 1 else (batch_size, width)
        batch[TARGET] = torch.randn(shape, generator=generator)
    return batch
