"""Models by name: ``create_model("resnet18", num_classes=3)``.

Every model is declared once, where it is defined: ``@register_model("tabular_mlp")`` on a
class, or ``@backbone`` on a function named after the model (:mod:`mlp_models.vision`). A
registered object is anything callable with keyword arguments that returns a
:class:`~mlp_models.base.BaseModel`: a class, or a function/partial that fixes some arguments
(each torchvision backbone is ``partial(VisionModel, "resnet18")``). Its signature is the list of
accepted arguments, so a typo in a config is an error that names the model and what it accepts.

Other distributions add models the same way, and name the modules that register them in the
entry-point group ``mlp.models``, one entry point per module (its name is only a label)::

    [project.entry-points."mlp.models"]
    my_package = "my_package.models"

Those modules are imported the first time a name is not found among the models registered so
far, or when every name is listed. mlp-models declares no entry point of its own: importing
``mlp_models`` registers its built-in models.
"""

from __future__ import annotations

import difflib
import inspect
import warnings
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, TypeVar

from mlp_core.errors import ConfigError, ModelError, RegistryError
from mlp_core.registry import Registry
from mlp_models.base import BaseModel

ModelFactory = Callable[..., BaseModel]
F = TypeVar("F", bound=ModelFactory)

PLUGIN_GROUP = "mlp.models"

models: Registry[ModelFactory] = Registry("model")

# Entry points already imported (by their value), and those whose import failed, with why.
_imported: set[str] = set()
_failed: dict[str, str] = {}


class PluginImportWarning(UserWarning):
    """A module named in the ``mlp.models`` entry points could not be imported."""


def register_model(name: str) -> Callable[[F], F]:
    """Decorator: ``@register_model("my_net")`` on a BaseModel subclass or factory function."""

    def add(factory: F) -> F:
        models.register(name, factory)
        return factory

    return add


def list_models() -> list[str]:
    """Every registered name, built-in and from installed plugin modules, sorted."""
    _import_plugins()
    return models.names()


def _factory(name: str) -> ModelFactory:
    """The factory registered as ``name``, importing plugin modules if it is not known yet."""
    if name not in models:
        _import_plugins()
    if name not in models:
        failed = "; ".join(f"{module}: {why}" for module, why in sorted(_failed.items()))
        if failed:
            raise RegistryError(
                f"unknown model {name!r}; known: {', '.join(models.names())}; "
                f"plugin modules that failed to import: {failed}",
                hint="Reinstall the package that provides it, with the extras it needs.",
            )
    return models.get(name)  # raises the registry's "unknown model ... did you mean" error


def _import_plugins() -> None:
    for entry in entry_points(group=PLUGIN_GROUP):
        if entry.value in _imported:
            continue
        _imported.add(entry.value)
        try:
            entry.load()
        except ImportError as exc:
            dist = entry.dist.name if entry.dist else "an installed package"
            _failed[entry.value] = f"{exc} (from {dist})"
            warnings.warn(
                f"the models of {entry.value} (from {dist}) are unavailable: {exc}",
                PluginImportWarning,
                stacklevel=3,
            )


def create_model(name: str, **kwargs: Any) -> BaseModel:
    """Build the model registered as ``name`` with its keyword arguments, checked first."""
    factory = _factory(name)
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
    return list(_keyword_parameters(_factory(name)))


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
