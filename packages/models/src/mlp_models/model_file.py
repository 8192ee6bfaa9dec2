"""The file a model is saved to: its weights and the config that rebuilds it by name.

One file, written by ``torch.save`` and read back with ``torch.load(weights_only=True)``, so
loading never unpickles arbitrary objects. It holds a plain dict::

    {"format": "mlp-model", "format_version": 1,
     "config": '{"name": "resnet18", "kwargs": {"num_classes": 3, ...}, ...}',
     "state_dict": {"network.conv1.weight": tensor, ...}}

The config is a JSON string rather than nested Python values so that what is saved is exactly
what a model section of a YAML config could say, and tools can read it without torch's types.
Writes are atomic: a crash never leaves a truncated file in place of a good one.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeGuard

import torch
from torch import Tensor, nn

from mlp_core.errors import ModelError
from mlp_core.files import atomic_writer

FORMAT = "mlp-model"
FORMAT_VERSION = 1
_EXPECTED = "a model file written by mlp_models BaseModel.save()"


@dataclass(frozen=True)
class ModelFile:
    """What a model file holds, read and checked."""

    path: Path
    name: str
    kwargs: dict[str, Any]
    state_dict: dict[str, Tensor]
    metadata: dict[str, Any]


def write_model_file(
    path: str | os.PathLike[str], name: str, kwargs: dict[str, Any], module: nn.Module
) -> Path:
    config = {"name": name, "kwargs": kwargs, "mlp_models_version": version("mlp-models")}
    try:
        config_text = json.dumps(config, sort_keys=True)
    except TypeError as exc:
        raise ModelError(
            f"cannot save model {name!r} to {path}: its config is not JSON ({exc})",
            hint="A model's get_config() must return plain values: str, int, float, bool, "
            "lists and dicts of them.",
        ) from exc
    # Detached CPU copies: the file must not depend on the device the model was trained on.
    state = {key: tensor.detach().cpu() for key, tensor in module.state_dict().items()}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config_text,
        "state_dict": state,
    }
    with atomic_writer(path, "wb") as handle:
        torch.save(payload, handle)
    return Path(path)


def read_model_file(path: str | os.PathLike[str]) -> ModelFile:
    """Read and check a model file; anything wrong is a :class:`ModelError` naming the file."""
    file = Path(path)
    payload = load_tensors(file, what="model file", expected=_EXPECTED)
    if not is_model_payload(payload):
        raise ModelError(
            f"{file} is not an mlp model file: expected {_EXPECTED}, found "
            f"{_describe_payload(payload)}",
            hint="A plain torchvision state dict goes to a vision model's pretrained_weights=.",
        )
    if payload["format_version"] != FORMAT_VERSION:
        raise ModelError(
            f"{file} has model file format version {payload['format_version']!r}; this "
            f"mlp-models reads version {FORMAT_VERSION}",
            hint="Load it with the mlp-models version that wrote it.",
        )
    config = _parse_config(file, payload["config"])
    state = payload["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(t, Tensor) for t in state.values()):
        raise ModelError(f"{file}: state_dict is not a mapping of names to tensors")
    metadata = {key: value for key, value in config.items() if key not in ("name", "kwargs")}
    return ModelFile(file, config["name"], config["kwargs"], state, metadata)


def is_model_payload(payload: object) -> TypeGuard[dict[str, Any]]:
    return (
        isinstance(payload, dict)
        and payload.get("format") == FORMAT
        and {"format_version", "config", "state_dict"} <= payload.keys()
    )


def load_tensors(path: Path, *, what: str, expected: str) -> object:
    """``torch.load(weights_only=True)`` on CPU, with every failure turned into a ModelError."""
    if not path.exists():
        raise ModelError(f"{what} {path} does not exist; expected {expected}")
    if not path.is_file():
        raise ModelError(f"{what} {path} is not a file; expected {expected}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses anything but tensors and plain containers: a pickled model
        # object (or a file that is not torch's at all) ends up here.
        raise ModelError(
            f"{what} {path} cannot be read safely: it holds objects other than tensors and "
            f"plain values, or is not a torch file; expected {expected}",
            hint="Save a state dict (model.state_dict()), not a whole pickled model.",
        ) from exc
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise ModelError(
            f"{what} {path} is truncated or corrupt ({exc}); expected {expected}",
            hint="Write the file again; an interrupted copy or download leaves a partial file.",
        ) from exc


def _parse_config(file: Path, text: object) -> dict[str, Any]:
    try:
        config = json.loads(text) if isinstance(text, str) else None
    except json.JSONDecodeError as exc:
        raise ModelError(f"{file}: its config is not valid JSON ({exc})") from exc
    if (
        not isinstance(config, dict)
        or not isinstance(config.get("name"), str)
        or not isinstance(config.get("kwargs"), dict)
    ):
        raise ModelError(
            f"{file}: its config must be a JSON object with a string 'name' and an object "
            f"'kwargs', got {text!r}"
        )
    return config


def _describe_payload(payload: object) -> str:
    if isinstance(payload, dict):
        keys = list(payload)
        shown = ", ".join(map(str, keys[:5])) + (", ..." if len(keys) > 5 else "")
        return f"a dict with keys {shown}" if keys else "an empty dict"
    return f"a {type(payload).__name__}"
