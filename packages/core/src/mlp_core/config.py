"""Configuration: YAML files validated by pydantic models.

A config has the sections ``data``, ``model``, ``training`` and ``serve``. It is read from one
YAML file holding the sections, or from a folder holding ``data_config.yaml``,
``model_config.yaml`` and ``training_config.yaml`` (and optionally ``serve_config.yaml``).
``--set training.epochs=3`` overrides any key; values are parsed as YAML, so ``3`` is an int,
``true`` a bool and ``[64, 32]`` a list.

The packages that own a section extend it by subclassing its model and :class:`MlpConfig`::

    class TrainingSection(mlp_core.config.TrainingSection):
        optimizer: str = "adamw"

    class TrainConfig(MlpConfig):
        training: TrainingSection = TrainingSection()

    cfg = load_config("examples/penguins", ["training.epochs=3"], schema=TrainConfig)

A bad config raises one :class:`ConfigError` listing every problem with its file, key path,
what was expected and what was given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeGuard, TypeVar, overload

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mlp_core.errors import ConfigError
from mlp_core.files import atomic_write_text

SECTIONS = ("data", "model", "training", "serve")
SECTION_FILES = {section: f"{section}_config.yaml" for section in SECTIONS}
REQUIRED_SECTION_FILES = ("data", "model", "training")
OVERRIDE_SOURCE = "--set"


class Section(BaseModel):
    """Base of every section: unknown keys are errors, so typos never pass silently."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSection(Section):
    adapter: str = Field(default="csv", description="registered data adapter name")
    path: Path | None = Field(default=None, description="file or folder the adapter reads")
    batch_size: int = Field(default=32, gt=0)
    num_workers: int = Field(default=0, ge=0)


class ModelSection(Section):
    # A model's own keyword arguments sit beside its name and are checked by the model's typed
    # signature when it is created, so this section alone accepts extra keys.
    model_config = ConfigDict(extra="allow", validate_assignment=True)

    name: str = Field(..., description="registered model name")


class TrainingSection(Section):
    epochs: int = Field(default=10, gt=0)
    seed: int = Field(default=42, ge=0, lt=2**32)
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N")
    run_dir: Path = Field(default=Path("runs"), description="folder that holds the run folders")
    experiment: str = Field(default="default", description="experiment name in the tracker")


class ServeSection(Section):
    """Where a server listens. mlp-serve's ``ServeConfig`` subclasses this section with the
    rest of its keys (models, batching, providers, limits, auth) and forbids unknown ones there;
    a command that does not serve (``mlp train``) keeps those keys as given, so one file can
    drive training, export and serving."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=0, le=65535)
    grpc_port: int = Field(default=8001, ge=0, le=65535)


class MlpConfig(BaseModel):
    """The whole configuration; ``model`` is required, the other sections have defaults."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    data: DataSection = DataSection()
    model: ModelSection
    training: TrainingSection = TrainingSection()
    serve: ServeSection = ServeSection()


C = TypeVar("C", bound=BaseModel)


# Without ``schema`` a config is an :class:`MlpConfig`; with it, an instance of that model.
@overload
def load_config(
    path: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = ()
) -> MlpConfig: ...
@overload
def load_config(
    path: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = (), *, schema: type[C]
) -> C: ...


def load_config(
    path: str | os.PathLike[str],
    overrides: list[str] | tuple[str, ...] = (),
    *,
    schema: type[BaseModel] = MlpConfig,
) -> BaseModel:
    """Read, override and validate a config from a YAML file or a folder of section files."""
    raw, sources = _read(Path(path))
    apply_overrides(raw, overrides, sources)
    return validate_config(raw, schema=schema, sources=sources)


def apply_overrides(
    raw: dict[str, Any],
    overrides: list[str] | tuple[str, ...],
    sources: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides to a raw config in place; every bad one is listed."""
    sources = sources if sources is not None else {}
    problems: list[str] = []
    for override in overrides:
        try:
            _apply_override(raw, sources, override)
        except ConfigError as exc:
            problems.append(exc.message)
    if problems:
        raise _config_error(problems)
    return raw


@overload
def validate_config(raw: dict[str, Any], *, sources: dict[str, str] | None = None) -> MlpConfig: ...
@overload
def validate_config(
    raw: dict[str, Any], *, schema: type[C], sources: dict[str, str] | None = None
) -> C: ...


def validate_config(
    raw: dict[str, Any],
    *,
    schema: type[BaseModel] = MlpConfig,
    sources: dict[str, str] | None = None,
) -> BaseModel:
    """Validate a plain dict; ``sources`` maps a section to the file it came from."""
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        raise config_error_from(exc, sources=sources) from None


def validate_section(
    raw: dict[str, Any], schema: type[C], section: str, *, source: str | None = None
) -> C:
    """Validate one section with its owner's model (an adapter's, a model's options)."""
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        raise config_error_from(exc, prefix=(section,), sources={section: source or ""}) from None


def config_error_from(
    exc: ValidationError,
    *,
    prefix: tuple[str, ...] = (),
    sources: dict[str, str] | None = None,
) -> ConfigError:
    """One :class:`ConfigError` listing every problem of a pydantic ``ValidationError``."""
    return _config_error([_describe(err, sources or {}, prefix) for err in exc.errors()])


def dump_config(config: BaseModel) -> str:
    """The resolved config as YAML; loading it back gives an equal config."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def save_config(config: BaseModel, path: str | os.PathLike[str]) -> Path:
    return atomic_write_text(path, dump_config(config))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"training": {"epochs": 3}}`` -> ``{"training.epochs": 3}`` (lists kept as values)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if _is_mapping(value) and value:
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


# -- reading -------------------------------------------------------------------------------------


def _read(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    if path.is_dir():
        return _read_folder(path)
    if not path.exists():
        raise ConfigError(
            f"config {path} does not exist",
            hint="Pass a YAML file with the sections data, model and training, or a folder with "
            + ", ".join(SECTION_FILES[s] for s in REQUIRED_SECTION_FILES)
            + ".",
        )
    document = read_yaml(path)
    return document, dict.fromkeys([*SECTIONS, *document], str(path))


def _read_folder(folder: Path) -> tuple[dict[str, Any], dict[str, str]]:
    missing = [
        SECTION_FILES[s] for s in REQUIRED_SECTION_FILES if not (folder / SECTION_FILES[s]).exists()
    ]
    if missing:
        raise ConfigError(
            f"config folder {folder} lacks {', '.join(missing)}",
            hint="A config folder holds data_config.yaml, model_config.yaml and training_config.yaml.",
        )
    raw: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for section, filename in SECTION_FILES.items():
        file = folder / filename
        if not file.exists():
            continue
        document = read_yaml(file)
        # Accept both the bare section body and a file that wraps it in its section key.
        if set(document) == {section} and isinstance(document[section], dict):
            document = document[section]
        raw[section] = document
        sources[section] = str(file)
    return raw, sources


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}:{where}: invalid YAML: {problem}") from None
    if document is None:
        return {}
    if not _is_mapping(document):
        raise ConfigError(
            f"{path}: expected a mapping of keys to values, got {type(document).__name__}"
        )
    return document


# -- overrides -----------------------------------------------------------------------------------


def parse_override(override: str) -> tuple[list[str], Any]:
    """``"training.epochs=3"`` -> ``(["training", "epochs"], 3)``."""
    key, sep, text = override.partition("=")
    keys = key.strip().split(".")
    if not sep or not all(keys):
        raise ConfigError(
            f"{OVERRIDE_SOURCE} {override!r}: expected key.path=value, e.g. training.epochs=3"
        )
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text  # not YAML: keep the literal string and let validation judge it
    return keys, value


def _apply_override(raw: dict[str, Any], sources: dict[str, str], override: str) -> None:
    keys, value = parse_override(override)
    if keys[0] not in SECTIONS:
        raise ConfigError(
            f"{OVERRIDE_SOURCE} {override!r}: unknown section {keys[0]!r}; "
            f"expected one of {', '.join(SECTIONS)}"
        )
    node = raw
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not _is_mapping(child):
            path = ".".join(keys[: depth + 1])
            raise ConfigError(
                f"{OVERRIDE_SOURCE} {override!r}: {path} holds {child!r}, not a mapping"
            )
        node = child
    node[keys[-1]] = value
    sources.setdefault(keys[0], OVERRIDE_SOURCE)
    sources[".".join(keys)] = OVERRIDE_SOURCE


# -- errors --------------------------------------------------------------------------------------


def _describe(
    error: Mapping[str, Any], sources: dict[str, str], prefix: tuple[str, ...] = ()
) -> str:
    path = ".".join(str(part) for part in (*prefix, *error["loc"])) or "(top level)"
    source = _source_of(path, sources)
    expected = error["msg"]
    if error["type"] == "missing":
        return f"{source}: {path}: required key is missing"
    if error["type"] == "extra_forbidden":
        return f"{source}: {path}: unknown key (given {error['input']!r})"
    return f"{source}: {path}: {expected[0].lower()}{expected[1:]}; given {error['input']!r}"


def _is_mapping(value: object) -> TypeGuard[dict[str, Any]]:
    # YAML mappings and config sections are dicts keyed by strings.
    return isinstance(value, dict)


def _source_of(path: str, sources: dict[str, str]) -> str:
    # The most specific source wins: an override of this exact key, else the section's file.
    parts = path.split(".")
    for end in range(len(parts), 0, -1):
        source = sources.get(".".join(parts[:end]))
        if source:
            return source
    return "<config>"


def _config_error(problems: list[str]) -> ConfigError:
    count = len(problems)
    header = f"invalid configuration ({count} problem{'s' if count != 1 else ''}):"
    return ConfigError("\n".join([header, *(f"  - {p}" for p in problems)]))
