"""The server's configuration: ports, models, onnxruntime options, batching, limits, auth.

It is the ``serve`` section of an mlp config file, or a file holding only that section::

    serve:
      http_port: 8000
      batching: {max_batch_size: 32, max_queue_delay_ms: 1.0}

:class:`ServeConfig` extends :class:`mlp_core.config.ServeSection` (where the server listens), as
DESIGN.md has owners extend their sections: ``mlp train`` reads the same file with the core
section, which keeps these keys as given, and ``mlp serve`` checks them here. Unknown keys are
errors here, so a typo never passes silently.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from mlp_core.config import ServeSection, apply_overrides, read_yaml, validate_config
from mlp_core.errors import ConfigError

DEFAULT_PROVIDERS = ["CUDAExecutionProvider", "CPUExecutionProvider"]
MIB = 1 << 20


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BatchingConfig(_Strict):
    """Dynamic batching, per model: concurrent requests merged into one onnxruntime run."""

    enabled: bool = True
    max_batch_size: int = Field(
        default=64, gt=0, description="rows in one run; also a request's limit"
    )
    max_queue_delay_ms: float = Field(
        default=0.0,
        ge=0,
        description="how long a batch waits to fill; 0 (Triton's default): it takes what queued "
        "while the previous batch ran, and a lone request runs at once",
    )
    max_queue_size: int = Field(default=256, gt=0, description="requests waiting; beyond it: 503")


class AuthConfig(_Strict):
    """Where bearer tokens come from: a file (a mounted Kubernetes Secret, re-read when it
    changes) and/or an environment variable, each holding ``SCOPES TOKEN`` lines (scopes:
    ``inference``, ``admin``). With either, inference needs a token; see :mod:`mlp_serve.auth`."""

    tokens_file: str | None = Field(
        default=None, description="file of 'SCOPES TOKEN' lines; re-read when it changes"
    )
    tokens_env: str | None = Field(
        default="MLP_SERVE_TOKENS",
        description="environment variable of 'SCOPES TOKEN' entries (newline or ';' "
        "separated), read at start when set; None: not read",
    )
    reload_seconds: float = Field(
        default=1.0, ge=0, description="how often the tokens file is checked; 0: every request"
    )


class ServeConfig(ServeSection):
    """The whole serve section: ``host``, ``http_port`` and ``grpc_port`` (0 picks a free port)
    come from :class:`~mlp_core.config.ServeSection`, the rest is the server's own."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    models: list[str] | None = Field(default=None, description="models to serve; None: every one")
    poll_seconds: float | None = Field(
        default=5.0, gt=0, description="how often to look for new versions; None: never"
    )
    device: Literal["auto", "cuda", "cpu"] = Field(
        default="auto",
        description="auto: the first of `providers` that can start here, else the CPU (one log "
        "line per model says which and why); cuda: a GPU provider or the model is refused "
        "(Triton's KIND_GPU); cpu: the CPU only, CUDA never loaded (KIND_CPU)",
    )
    providers: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PROVIDERS),
        description="onnxruntime execution providers in order of preference; those that "
        "cannot start on this machine are left out (a warning when set explicitly)",
    )
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    intra_op_threads: int = Field(default=0, ge=0, description="0: onnxruntime's default")
    inter_op_threads: int = Field(default=0, ge=0, description="0: onnxruntime's default")
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    max_request_bytes: int = Field(default=64 * MIB, gt=0, description="larger bodies get 413")
    grpc_max_message_bytes: int = Field(default=256 * MIB, gt=0)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    auth_token: str | None = Field(
        default=None,
        description="bearer token the inference API requires (kept for compatibility: prefer "
        "auth.tokens_file, which `ps` and the config never show)",
    )
    admin_token: str | None = Field(
        default=None, description="bearer token of the load/unload API (prefer auth.tokens_file)"
    )
    cors_origins: list[str] = Field(default_factory=list, description="empty: CORS off")
    warmup: bool = Field(default=True, description="run a zero batch at load; a failure refuses it")
    # The tokens watcher made from this config (mlp_serve.auth.authenticator_for), shared by
    # both front ends; runtime state, not a setting.
    _authenticator: Any = PrivateAttr(default=None)


class _ServeFile(BaseModel):
    # A file with a `serve:` section may hold the training sections too: only `serve` is read.
    model_config = ConfigDict(extra="ignore")

    serve: ServeConfig = Field(default_factory=ServeConfig)


def load_serve_config(
    path: str | os.PathLike[str] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> ServeConfig:
    """The config from a YAML file (a ``serve:`` section or a bare one), then ``serve.key=value``
    overrides (``http_port=0`` is accepted as short for ``serve.http_port=0``)."""
    raw: dict[str, Any] = {"serve": {}}
    sources: dict[str, str] = {}
    if path is not None:
        document = _read_serve_file(Path(path))
        is_sectioned = isinstance(document.get("serve"), dict)
        raw = {"serve": document["serve"]} if is_sectioned else {"serve": document}
        sources["serve"] = str(path)
    full = [item if item.startswith("serve.") else f"serve.{item}" for item in overrides]
    apply_overrides(raw, full, sources)
    return validate_config(raw, schema=_ServeFile, sources=sources).serve


def _read_serve_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"serve config {path} does not exist", hint="Pass an existing YAML file.")
    # mlp_core's reader gives the same file/line error messages as every other mlp command.
    return read_yaml(path)
