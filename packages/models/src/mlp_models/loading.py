"""Rebuild a saved model by its registered name and load its weights."""

from __future__ import annotations

import os

import torch

from mlp_core.errors import ConfigError, ModelError, RegistryError
from mlp_models.base import BaseModel
from mlp_models.model_file import read_model_file
from mlp_models.registry import create_model
from mlp_models.state_dicts import load_state_dict_checked


def load_model(
    path: str | os.PathLike[str],
    *,
    expected_name: str | None = None,
    device: str | torch.device = "cpu",
) -> BaseModel:
    """The model saved at ``path`` by :meth:`BaseModel.save`, in eval mode on ``device``.

    ``expected_name`` guards against loading the wrong file: a file holding another model is a
    :class:`ModelError` instead of a surprise later.
    """
    saved = read_model_file(path)
    if expected_name is not None and saved.name != expected_name:
        raise ModelError(
            f"{saved.path} holds a {saved.name!r} model; expected a {expected_name!r} one"
        )
    try:
        model = create_model(saved.name, **saved.kwargs)
    except RegistryError as exc:
        raise ModelError(
            f"{saved.path} holds a {saved.name!r} model, which is not installed: {exc.message}",
            hint=exc.hint,
        ) from exc
    except ConfigError as exc:
        version = saved.metadata.get("mlp_models_version", "an unknown version")
        raise ModelError(
            f"{saved.path} holds a {saved.name!r} model whose saved arguments this version "
            f"cannot build (saved by mlp-models {version}): {exc.message}",
            hint="Load it with the mlp-models version that saved it.",
        ) from exc
    load_state_dict_checked(
        model, saved.state_dict, source=str(saved.path), target=f"model {saved.name!r}"
    )
    return model.to(device).eval()
