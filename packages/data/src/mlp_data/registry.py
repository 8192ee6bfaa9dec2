"""Adapters by name: ``data.adapter: csv`` in a config picks :class:`CSVAdapter`.

Third-party adapters plug in through the entry-point group ``mlp.adapters``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel

from mlp_core.errors import ConfigError
from mlp_core.registry import Registry
from mlp_data.base import DataAdapter

A = TypeVar("A", bound=type[DataAdapter])

adapters: Registry[type[DataAdapter]] = Registry("data adapter", group="mlp.adapters")


def register_adapter(name: str) -> Callable[[A], A]:
    """Class decorator: ``@register_adapter("csv")`` makes ``data.adapter: csv`` build it."""

    def add(cls: A) -> A:
        adapters.register(name, cls)
        return cls

    return add


def list_adapters() -> list[str]:
    return adapters.names()


def create_adapter(
    section: dict[str, Any] | BaseModel, *, source: str | None = None
) -> DataAdapter:
    """Build the adapter a ``data`` section names, validated with that adapter's options."""
    raw = section.model_dump() if isinstance(section, BaseModel) else dict(section)
    name = raw.get("adapter")
    if not isinstance(name, str):
        raise ConfigError(
            f"{source or '<config>'}: data.adapter: required; known: {list_adapters()}"
        )
    return adapters.get(name).from_config(raw, source=source)
