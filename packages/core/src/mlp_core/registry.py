"""A small name -> factory registry with entry-point discovery.

Packages register what they ship with a decorator; other distributions plug in through an
entry-point group (``mlp.models``, ``mlp.adapters``, ``mlp.commands``, ...). Entry points are
loaded only when their name is looked up, so listing names never imports heavy modules.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable, Iterator
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar, overload

from mlp_core.errors import RegistryError

T = TypeVar("T")


class DuplicateNameWarning(UserWarning):
    """A name was registered twice; the message says which one is in effect."""


class Registry(Generic[T]):
    """Maps names to objects (usually factories) of one kind."""

    def __init__(self, kind: str, group: str | None = None) -> None:
        self.kind = kind
        self.group = group
        self._items: dict[str, T] = {}
        self._entry_points: dict[str, EntryPoint] | None = None

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...
    @overload
    def register(self, name: str, obj: T) -> T: ...

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; usable as ``@registry.register("name")``."""

        def add(item: T) -> T:
            if name in self._items and self._items[name] is not item:
                warnings.warn(
                    f"{self.kind} {name!r} registered twice; the later registration "
                    f"({_describe(item)}) replaces {_describe(self._items[name])}",
                    DuplicateNameWarning,
                    stacklevel=3,
                )
            self._items[name] = item
            return item

        return add if obj is None else add(obj)

    def get(self, name: str) -> T:
        if name in self._items:
            return self._items[name]
        entry = self._discovered().get(name)
        if entry is None:
            raise self._unknown(name)
        try:
            item = entry.load()
        except ImportError as exc:
            dist = entry.dist.name if entry.dist else "its package"
            raise RegistryError(
                f"{self.kind} {name!r} (from {dist}) cannot be loaded: {exc}",
                hint=f"Reinstall {dist} with the extras it needs.",
            ) from exc
        self._items[name] = item
        return item

    def names(self) -> list[str]:
        return sorted(set(self._items) | set(self._discovered()))

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._discovered()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def _discovered(self) -> dict[str, EntryPoint]:
        if self._entry_points is None:
            found: dict[str, EntryPoint] = {}
            for entry in entry_points(group=self.group) if self.group else ():
                if entry.name in found and found[entry.name].value != entry.value:
                    warnings.warn(
                        f"{self.kind} {entry.name!r} is provided by two entry points "
                        f"({found[entry.name].value} and {entry.value}); using the first",
                        DuplicateNameWarning,
                        stacklevel=3,
                    )
                    continue
                found[entry.name] = entry
            self._entry_points = found
        return self._entry_points

    def _unknown(self, name: str) -> RegistryError:
        known = self.names()
        close = difflib.get_close_matches(name, known, n=3)
        suggestion = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        return RegistryError(
            f"unknown {self.kind} {name!r}; known: {', '.join(known) or 'none'}.{suggestion}",
            hint=f"Use one of the registered names, or install the package that provides {name!r}.",
        )


def _describe(obj: object) -> str:
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    return f"{module}.{qualname}" if module and qualname else repr(obj)
