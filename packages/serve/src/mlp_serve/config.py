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
from typing import Annotated, Any, Literal

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
    max_queue_bytes: int = Field(
        default=512 * MIB,
        gt=0,
        description="bytes of input tensors waiting; beyond it: 503 / RESOURCE_EXHAUSTED (a "
        "request that finds the queue empty is always taken)",
    )


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


class RateLimit(_Strict):
    """A token bucket: ``rate`` requests a second on average, up to ``burst`` at once."""

    rate: float = Field(gt=0, description="requests per second, refilled continuously")
    burst: int | None = Field(
        default=None, ge=1, description="the bucket's size; None: one second's worth (>= 1)"
    )


class RateLimitConfig(_Strict):
    """Per-client rate limits (see :mod:`mlp_serve.ratelimit`): a client is its token when it
    sends a known one, else its address. ``rate``/``burst``: each client's budget for every
    model without its own entry and the server's other endpoints; ``models``: a separate budget
    per named model. Health and metrics are never limited. Off unless set."""

    rate: float | None = Field(default=None, gt=0, description="None: no server-wide limit")
    burst: int | None = Field(default=None, ge=1, description="None: one second's worth")
    models: dict[str, RateLimit] = Field(default_factory=dict)


class TlsConfig(_Strict):
    """TLS for REST and gRPC (see :mod:`mlp_serve.tls`): PEM files, read at start."""

    cert_file: str | None = Field(default=None, description="server certificate chain (PEM)")
    key_file: str | None = Field(default=None, description="its private key (PEM)")
    client_ca_file: str | None = Field(
        default=None, description="CA bundle that client certificates are checked against (mTLS)"
    )
    require_client_cert: bool = Field(
        default=False,
        description="refuse clients without a certificate from client_ca_file; false: a "
        "certificate is asked for, checked if sent, and optional",
    )


class ServeConfig(ServeSection):
    """The whole serve section: ``host``, ``http_port`` and ``grpc_port`` (0 picks a free port)
    come from :class:`~mlp_core.config.ServeSection`, the rest is the server's own."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    workers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        default=1,
        description="server processes behind the same ports (SO_REUSEPORT, Linux), each with "
        "its own copy of the models; 1: this process serves; 0 or 'auto': one per CPU this "
        "process may use (see mlp_serve.workers)",
    )
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
    intra_op_threads: int = Field(
        default=0,
        ge=0,
        description="onnxruntime intra-op threads per model; 0 (auto): 1 for a small model, "
        "more for a big one, never more than the CPUs the process may use (affinity, cgroup "
        "quota; see mlp_serve.threads)",
    )
    intra_op_spinning: bool | None = Field(
        default=None,
        description="whether onnxruntime's pool threads spin while waiting for work; None "
        "(auto): only when the pool leaves a usable CPU free for the front end",
    )
    inter_op_threads: int = Field(default=0, ge=0, description="0: onnxruntime's default")
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    max_request_bytes: int = Field(default=64 * MIB, gt=0, description="larger bodies get 413")
    grpc_max_message_bytes: int = Field(default=256 * MIB, gt=0)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    # Security and limits (mlp_serve.ratelimit, tls, deadlines, http_limits).
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig)
    tls: TlsConfig = Field(default_factory=TlsConfig)
    request_timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        description="longest a request may wait and run on the server: REST 504, gRPC "
        "DEADLINE_EXCEEDED, taken out of the queue if not run yet; None: no limit (a gRPC "
        "client's own deadline still applies)",
    )
    grpc_max_metadata_bytes: int = Field(
        default=16 * 1024, gt=0, description="gRPC request metadata (headers) above it refused"
    )
    http_max_header_bytes: int = Field(
        default=64 * 1024, gt=0, description="request line and headers above it: 431"
    )
    http_header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="a connection that has not sent a request's headers in full this long after "
        "its first byte (or after opening) is closed: slowloris",
    )
    http_keep_alive_seconds: float = Field(
        default=5.0, gt=0, description="an idle keep-alive connection is closed after it"
    )
    http_max_concurrency: int | None = Field(
        default=None, gt=0, description="connections or requests at once; beyond: 503; None: no cap"
    )
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
    access_log: bool = Field(
        default=False,
        description="one log line per REST request (method, path, status, ms, client); off by "
        "default, as in Triton: at thousands of requests/s it costs more than the request",
    )
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
