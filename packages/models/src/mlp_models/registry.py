"""Models by name: ``create_model("resnet18", num_classes=3)``.

Built-in families register themselves with ``@register_model(name)``; other distributions add
models through the entry-point group ``mlp.models`` (loaded only when their name is asked for)::

    [project.entry-points."mlp.models"]
    my_net = "my_package.models:MyNet"

A registered object is anything callable with keyword arguments that returns a
:class:`~mlp_models.base.BaseModel`: a class, or a function/partial that fixes some arguments
(each torchvision backbone is ``partial(VisionModel, "resnet18")``). Its signature is the list of
accepted arguments, so a typo in a config is an error that names the model and what it accepts.

Planned: YOLO detection models (``mlp-models[yolo]``, ultralytics) register the same way, from a
module that imports without ultralytics so that ``list_models()`` shows them everywhere. The
wrapper imports ultralytics lazily when a model is built and raises
``MissingDependencyError("YOLO models", "mlp-models[yolo]")`` when it is missing. It sets
``trains_itself = True`` and provides ``fit(...)``, so the trainer hands training to ultralytics,
and it overrides ``save``/``load_weights`` for ultralytics' own weight files.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from mlp_core.errors import ConfigError, ModelError
from mlp_core.registry import Registry
from mlp_models.base import BaseModel

ModelFactory = Callable[..., BaseModel]
F = TypeVar("F", bound=ModelFactory)

models: Registry[ModelFactory] = Registry("model", group="mlp.models")


def register_model(name: str) -> Callable[[F], F]:
    """Decorator: ``@register_model("my_net")`` on a BaseModel subclass or factory function."""
    return models.register(name)


def list_models() -> list[str]:
    """Every registered name, built-in and from installed entry points, sorted."""
    return models.names()


def create_model(name: str, **kwargs: Any) -> BaseModel:
    """Build the model registered as ``name`` with its keyword arguments, checked first."""
    factory = models.get(name)
    _check_arguments(name, factory, kwargs)
    model = factory(**kwargs)
    if not isinstance(model, BaseModel):
        raise ModelError(
            f"model {name!r} built a {type(model).__name__}, not an mlp_models.BaseModel",
            hint="A registered model must subclass mlp_models.BaseModel.",
        )
    return model


def accepted_arguments(name: str) -> list[str]:
    """The keyword arguments model ``name`` accepts, in signature order."""
    return list(_keyword_parameters(models.get(name)))


def _check_arguments(name: str, factory: ModelFactory, kwargs: dict[str, Any]) -> None:
    parameters = _keyword_parameters(factory)
    takes_any = any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        for p in inspect.signature(factory).parameters.values()
    )
    accepted = ", ".join(parameters) or "none"
    unknown = [key for key in kwargs if key not in parameters]
    if unknown and not takes_any:
        suggestions = []
        for key in unknown:
            close = difflib.get_close_matches(key, list(parameters), n=1)
            if close:
                suggestions.append(f"{key!r} -> {close[0]!r}")
        did_you_mean = f" Did you mean {', '.join(suggestions)}?" if suggestions else ""
        raise ConfigError(
            f"model {name!r} does not accept {', '.join(map(repr, unknown))}; "
            f"accepted arguments: {accepted}.{did_you_mean}"
        )
    missing = [
        key
        for key, parameter in parameters.items()
        if parameter.default is inspect.Parameter.empty and key not in kwargs
    ]
    if missing:
        raise ConfigError(
            f"model {name!r} needs {', '.join(map(repr, missing))}; accepted arguments: {accepted}"
        )


def _keyword_parameters(factory: ModelFactory) -> dict[str, inspect.Parameter]:
    keyword_kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {
        name: parameter
        for name, parameter in inspect.signature(factory).parameters.items()
        if parameter.kind in keyword_kinds
    }
