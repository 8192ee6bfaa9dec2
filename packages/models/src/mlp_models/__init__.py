"""mlp-models: the model registry and the model families of mlp.

``create_model(name, **kwargs)`` builds any registered model; ``load_model(path)`` rebuilds a
saved one. Every model is a :class:`BaseModel`; its :meth:`BaseModel.signature` is an
:class:`mlp_core.tensors.ModelSignature`. Importing this package registers the built-in models.
"""

from importlib.metadata import version as _version

from mlp_core.tasks import Task
from mlp_models.base import BaseModel, ParameterCounts, StepResult
from mlp_models.loading import load_model
from mlp_models.model_file import ModelFile, read_model_file
from mlp_models.registry import (
    accepted_arguments,
    create_model,
    list_models,
    models,
    register_model,
)
from mlp_models.tabular import TabularModel, embedding_size
from mlp_models.vision import VisionModel
from mlp_models.yolo import YOLOModel  # registers "yolo"; ultralytics is imported on first use

__version__ = _version("mlp-models")

__all__ = [
    "BaseModel",
    "ModelFile",
    "ParameterCounts",
    "StepResult",
    "TabularModel",
    "Task",
    "VisionModel",
    "YOLOModel",
    "__version__",
    "accepted_arguments",
    "create_model",
    "embedding_size",
    "list_models",
    "load_model",
    "models",
    "read_model_file",
    "register_model",
]
