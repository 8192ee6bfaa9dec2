"""Checks for model constructor arguments, with messages in the style of config errors.

Model arguments usually come from the ``model`` section of a YAML config, so a bad value is a
:class:`ConfigError` saying which model, which argument, what was expected and what was given.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any

from mlp_core.errors import ConfigError


def check_int(model: str, name: str, value: Any, *, minimum: int) -> int:
    # bool is an int subclass; `hidden_sizes: [true]` is a typo, not a width of 1.
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _error(model, name, f"an integer >= {minimum}", value)
    return value


def check_int_list(model: str, name: str, value: Any, *, minimum: int) -> list[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise _error(model, name, f"a list of integers >= {minimum}", value)
    if any(not isinstance(v, int) or isinstance(v, bool) or v < minimum for v in value):
        raise _error(model, name, f"a list of integers >= {minimum}", value)
    return list(value)


def check_fraction(model: str, name: str, value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
        raise _error(model, name, "a number in [0, 1)", value)
    return float(value)


def check_choice(model: str, name: str, value: Any, allowed: Iterable[str]) -> str:
    options = list(allowed)
    if value not in options:
        close = difflib.get_close_matches(str(value), options, n=1)
        suggestion = f" (did you mean {close[0]!r}?)" if close else ""
        raise _error(model, name, f"one of {', '.join(options)}{suggestion}", value)
    return value


def _error(model: str, name: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"model {model!r}: {name}: expected {expected}; given {value!r}")


def check_bool(model: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _error(model, name, "true or false", value)
    return value
