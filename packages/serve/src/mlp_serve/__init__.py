"""mlp-serve: ONNX models over REST and gRPC (Open Inference Protocol) on onnxruntime.

The names below load on first use, so ``import mlp_serve`` (which ``mlp --help`` does through
the command modules) stays free of onnxruntime, FastAPI and gRPC::

    from mlp_serve import BackgroundServer, load_serve_config

    with BackgroundServer("repo", load_serve_config("config.yaml")) as server:
        print(server.http_url)

    from mlp_serve import Predictor

    with Predictor.load("repo/penguins/1") as model:  # the same path, in this process
        print(model.predict([{"bill_length_mm": 39.1}]))
"""

from __future__ import annotations

import importlib
from importlib.metadata import version as _version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlp_serve.config import BatchingConfig, ServeConfig, load_serve_config
    from mlp_serve.dataplane import DataPlane
    from mlp_serve.predictor import Predictor
    from mlp_serve.server import BackgroundServer, serve

__version__ = _version("mlp-serve")

_LAZY = {
    "BackgroundServer": "mlp_serve.server",
    "serve": "mlp_serve.server",
    "DataPlane": "mlp_serve.dataplane",
    "Predictor": "mlp_serve.predictor",
    "BatchingConfig": "mlp_serve.config",
    "ServeConfig": "mlp_serve.config",
    "load_serve_config": "mlp_serve.config",
}

__all__ = [
    "BackgroundServer",
    "BatchingConfig",
    "DataPlane",
    "Predictor",
    "ServeConfig",
    "__version__",
    "load_serve_config",
    "serve",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mlp_serve' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup skips this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
