"""Logging for every mlp process, configured by one call to :func:`configure_logging`.

structlog renders both its own events and the standard library's records (uvicorn, grpc, mlflow,
ultralytics, any ``logging.getLogger(...)``), so one process writes one format per destination:
readable lines on stderr and, when asked, JSON lines in a file that tools can parse.

mlp's own loggers (``mlp_*``) speak at INFO. Other libraries' INFO lines are their chatter
(MLflow's database migrations, uvicorn's "Started server process"): they are shown as DEBUG,
so only ``MLP_LOG_LEVEL=DEBUG`` (or ``--log-level debug``) brings them back. Their warnings and
errors still reach the user (:data:`LIBRARY_LEVELS` sets the threshold per library).

    configure_logging("info", json_file=run_dir / "logs.jsonl")
    log = get_logger(__name__)
    with bind_context(run_id=run_id):
        log.info("epoch finished", epoch=3, loss=0.21)
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog
from structlog.contextvars import bind_contextvars, reset_contextvars
from structlog.types import EventDict, Processor

from mlp_core.errors import ConfigError

LEVEL_ENV = "MLP_LOG_LEVEL"
DEFAULT_LEVEL = logging.INFO

# Libraries that give their loggers a handler of their own and stop propagation, so their lines
# would bypass mlp's handlers; their levels (e.g. mlflow quietening alembic) are kept.
LIBRARY_LOGGERS = ("mlflow", "alembic", "sqlalchemy.engine", "huey", "ultralytics")
# Loggers that speak for mlp at INFO: its packages, and a script's own (``__main__``, the root).
OWN_LOGGERS = ("mlp", "mlp_*", "__main__", "root")
# The level from which another library's line is for the user; quieter ones are shown as DEBUG.
# Keyed by logger name, the longest matching prefix wins; "" is every library not listed.
LIBRARY_LEVELS: dict[str, int] = {"": logging.WARNING}
# MLflow configures its loggers on import unless told not to.
_MLFLOW_CONFIGURE_LOGGING = "MLFLOW_CONFIGURE_LOGGING"

# Marks a library's record that LibraryPolicy lets through as a DEBUG line.
_AS_DEBUG = "_mlp_as_debug"

# Marks the handlers this module installs, so reconfiguring replaces exactly those and leaves
# handlers that others attached to the root logger (pytest's, an embedding application's) alone.
_OWNED = "_mlp_obs_handler"


def configure_logging(
    level: str | int | None = None,
    *,
    json_file: str | Path | None = None,
    console: bool = True,
    json_console: bool | None = None,
    library_levels: Mapping[str, int] | None = None,
) -> None:
    """Route structlog and standard-library logging to stderr and, optionally, a JSON-lines file.

    ``level`` wins over the ``MLP_LOG_LEVEL`` environment variable, which wins over INFO.
    Other libraries' lines below their :data:`LIBRARY_LEVELS` threshold (``library_levels``
    adds to it) are shown as DEBUG lines, so at INFO they are left out.
    The console shows coloured lines on a terminal and plain ``key=value`` lines elsewhere;
    ``json_console=True`` writes JSON lines to stderr instead (for log collectors).
    Calling it again replaces the handlers it installed before. Libraries that install their
    own handlers (:data:`LIBRARY_LOGGERS`) are routed through these ones.
    """
    resolved = resolve_level(level)
    structlog.configure(
        processors=[*_shared_processors(), structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        context_class=dict,
        # Loggers created before a reconfiguration must pick up the new one.
        cache_logger_on_first_use=False,
    )

    handlers: list[logging.Handler] = []
    if console:
        stream_handler = logging.StreamHandler(sys.stderr)
        renderers = _json_renderers() if json_console else [_console_renderer()]
        stream_handler.setFormatter(_formatter(*renderers))
        handlers.append(stream_handler)
    if json_file is not None:
        path = Path(json_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(path, encoding="utf-8")
        file_handler.setFormatter(_formatter(*_json_renderers()))
        handlers.append(file_handler)

    policy = LibraryPolicy(resolved, {**LIBRARY_LEVELS, **(library_levels or {})})
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OWNED, False)]:
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        setattr(handler, _OWNED, True)
        handler.addFilter(policy)
        root.addHandler(handler)
    root.setLevel(resolved)
    os.environ.setdefault(_MLFLOW_CONFIGURE_LOGGING, "false")
    route_library_loggers()


def route_library_loggers(names: tuple[str, ...] = LIBRARY_LOGGERS) -> None:
    """Send the named libraries' loggers through the root logger's (mlp's) handlers.

    :func:`configure_logging` does this for the libraries mlp uses; call it again after
    importing a library that set up its own handlers on import.
    """
    root_level = logging.getLogger().level
    for name in names:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
        # A library may keep itself quieter than the rest (alembic at WARNING), never louder.
        if logger.level < root_level:
            logger.setLevel(logging.NOTSET)


def is_own_logger(name: str) -> bool:
    """Whether ``name`` is one of :data:`OWN_LOGGERS` (mlp's packages, ``__main__``, the root)."""
    return name in ("mlp", "__main__", "root") or name.startswith(("mlp.", "mlp_"))


class LibraryPolicy(logging.Filter):
    """A handler filter: another library's line below its threshold becomes a DEBUG line.

    Levels are decided where the line is written, not by muting loggers, so a library's
    warnings always pass and ``DEBUG`` shows everything, renamed or not.
    """

    def __init__(self, level: int, thresholds: Mapping[str, int]) -> None:
        super().__init__()
        self.level = level
        # Longest prefix first, so "mlflow.store" can differ from "mlflow".
        self.thresholds = sorted(thresholds.items(), key=lambda item: -len(item[0]))

    def threshold(self, name: str) -> int:
        for prefix, level in self.thresholds:
            if not prefix or name == prefix or name.startswith(prefix + "."):
                return level
        return logging.WARNING

    def filter(self, record: logging.LogRecord) -> bool:
        if is_own_logger(record.name) or record.levelno >= self.threshold(record.name):
            return True
        if self.level > logging.DEBUG:
            return False
        # Marked, not changed: other handlers (pytest's, an application's) see the record as is.
        setattr(record, _AS_DEBUG, True)
        return True


def resolve_level(level: str | int | None = None) -> int:
    """The numeric level: the argument, else ``MLP_LOG_LEVEL``, else INFO."""
    if level is None:
        level = os.environ.get(LEVEL_ENV) or DEFAULT_LEVEL
    if isinstance(level, int):
        return level
    number = logging.getLevelName(level.strip().upper())
    if not isinstance(number, int):
        source = f"{LEVEL_ENV}={level!r}" if level == os.environ.get(LEVEL_ENV) else repr(level)
        raise ConfigError(
            f"unknown log level {source}",
            hint="Use one of DEBUG, INFO, WARNING, ERROR or CRITICAL.",
        )
    return number


def get_logger(name: str | None = None, **initial: Any) -> structlog.stdlib.BoundLogger:
    """A structlog logger named like a standard-library logger, with ``initial`` values bound."""
    return structlog.stdlib.get_logger(name, **initial)


class bind_context:  # lower case: used like a function, `with bind_context(request_id=...)`
    """Add ``values`` (run_id, request_id, model, ...) to every event logged inside the block.

    The values live in context variables, so concurrent requests in asyncio tasks or threads
    each see their own. Leaving the block puts back what these keys held before; other keys
    are untouched.

    A class rather than structlog's ``bound_contextvars``: that one copies the whole context to
    find what to restore, and two generator layers cost about a tenth of a small model's REST
    request (``mlp serve`` binds the request id per request). Resetting the context variables'
    tokens restores the same values for the price of a dict.
    """

    __slots__ = ("_tokens", "_values")

    def __init__(self, **values: Any) -> None:
        self._values = values
        self._tokens: Mapping[str, contextvars.Token[Any]] = {}

    def __enter__(self) -> None:
        self._tokens = bind_contextvars(**self._values)

    def __exit__(self, *exc_info: object) -> None:
        reset_contextvars(**self._tokens)


def _shared_processors() -> list[Processor]:
    # Applied to structlog events before they reach the handlers, and to standard-library records
    # in the formatter (foreign_pre_chain), so both carry the same keys.
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]


def _formatter(*renderers: Processor) -> structlog.stdlib.ProcessorFormatter:
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            *_shared_processors(),
            structlog.stdlib.ExtraAdder(),
            _drop_record_leftovers,
            _library_chatter_as_debug,
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderers],
    )


# Attributes that ExtraAdder takes for extras but are not: "message" and "asctime" are set on the
# record by any earlier logging.Formatter, and uvicorn repeats every message with colour codes.
_RECORD_LEFTOVERS = ("message", "asctime", "color_message", _AS_DEBUG)


def _drop_record_leftovers(logger: Any, method: str, event: EventDict) -> EventDict:
    for key in _RECORD_LEFTOVERS:
        event.pop(key, None)
    return event


def _library_chatter_as_debug(logger: Any, method: str, event: EventDict) -> EventDict:
    record = event.get("_record")
    if record is not None and getattr(record, _AS_DEBUG, False):
        event["level"] = "debug"
    return event


def _json_renderers() -> list[Processor]:
    # JSON keeps tracebacks structured (frames, exception type and value) rather than one string.
    return [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]


def _console_renderer() -> Processor:
    # ConsoleRenderer formats exceptions itself; colour codes only help a human at a terminal.
    return structlog.dev.ConsoleRenderer(colors=_is_tty(sys.stderr))


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
