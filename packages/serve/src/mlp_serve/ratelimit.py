"""Per-client rate limits: token buckets with a rate and a burst, for REST and gRPC alike.

A *client* is its bearer token when it sends one the server knows, else its address (a request
with an unknown token is limited by address: guessing tokens costs budget too). Each client has
one bucket for every model named in ``serve.rate_limit.models`` and one for everything else (the
other models and the server's other endpoints), sized by ``serve.rate_limit.rate``/``burst``.
A bucket holds up to ``burst`` requests and refills at ``rate`` a second; a request that finds it
empty is refused at once: REST 429 with ``Retry-After`` (whole seconds, rounded up), gRPC
RESOURCE_EXHAUSTED with the same number in the trailing metadata ``retry-after``. Refusals are
counted in ``mlp_inference_requests_total`` with ``status="rate_limited"``.

Health and metrics are never limited: probes and scrapes must not fail because a client was
greedy. Limits are per server process: with ``--workers N`` each worker keeps its own buckets.
"""

from __future__ import annotations

import math
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mlp_obs.metrics import InferenceMetrics
from mlp_serve.auth import Authenticator, digest
from mlp_serve.config import RateLimit, RateLimitConfig
from mlp_serve.errors import RateLimited

if TYPE_CHECKING:
    import grpc

RATE_LIMITED = "rate_limited"
# Buckets that refilled completely are forgotten (a fresh bucket is the same), once there are
# this many: memory stays bounded by the clients active within a refill's time.
SWEEP_AT = 10_000
# REST paths never limited; gRPC methods never limited (the health service is a separate one).
_EXEMPT_PATHS = ("/v2/health/", "/metrics")
EXEMPT_GRPC_METHODS = frozenset({"ServerLive", "ServerReady"})
_MODEL_PATH = re.compile(r"^/v[12]/models/([^/]+)")
OTHER = ""  # the bucket of everything without a limit of its own


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class _Limit:
    __slots__ = ("burst", "rate")

    def __init__(self, rate: float, burst: int | None) -> None:
        self.rate = rate
        self.burst = float(burst if burst is not None else max(1, math.ceil(rate)))


class RateLimiter:
    """Token buckets keyed by (client, model's budget); thread-safe (REST's loop and gRPC's
    threads share one)."""

    def __init__(
        self, config: RateLimitConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._default = _Limit(config.rate, config.burst) if config.rate is not None else None
        self._models = {name: _Limit(limit.rate, limit.burst) for name, limit in _items(config)}
        self._buckets: dict[tuple[Any, str], _Bucket] = {}
        self._lock = threading.Lock()
        self._clock = clock
        self._sweep_at = SWEEP_AT

    def budget_of(self, model: str) -> str | None:
        """The bucket a request to ``model`` ("" for no model) draws from; None: unlimited."""
        if model in self._models:
            return model
        return OTHER if self._default is not None else None

    def wait(self, client: Any, model: str) -> float:
        """Take one request from the client's bucket for ``model``: 0.0 if allowed, else the
        seconds until the bucket holds one again (nothing is taken then)."""
        budget = self.budget_of(model)
        if budget is None:
            return 0.0
        limit = self._models[budget] if budget else self._default
        assert limit is not None
        now = self._clock()
        key = (client, budget)
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= self._sweep_at:
                    self._sweep(now)
                bucket = self._buckets[key] = _Bucket(limit.burst, now)
            else:
                bucket.tokens = min(limit.burst, bucket.tokens + (now - bucket.stamp) * limit.rate)
                bucket.stamp = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / limit.rate

    def check(self, client: Any, model: str) -> None:
        """Nothing if allowed, else :class:`~mlp_serve.errors.RateLimited`."""
        seconds = self.wait(client, model)
        if seconds > 0:
            what = f"model {model!r}" if self.budget_of(model) else "this server"
            raise RateLimited(
                f"rate limit reached for {what}: retry in {seconds:.2f} s",
                retry_after_seconds=max(1, math.ceil(seconds)),
                hint="Send fewer requests a second, or ask the operator for a higher "
                "serve.rate_limit.",
            )

    def _sweep(self, now: float) -> None:
        # Under the lock. A bucket that would be full now is the same as a missing one.
        def full(key: tuple[Any, str], bucket: _Bucket) -> bool:
            limit = self._models[key[1]] if key[1] else self._default
            assert limit is not None
            return bucket.tokens + (now - bucket.stamp) * limit.rate >= limit.burst

        self._buckets = {k: b for k, b in self._buckets.items() if not full(k, b)}
        self._sweep_at = max(SWEEP_AT, 2 * len(self._buckets))


def _items(config: RateLimitConfig) -> list[tuple[str, RateLimit]]:
    return list(config.models.items())


def rate_limiter_for(config: RateLimitConfig) -> RateLimiter | None:
    """The limiter the config asks for, or None when it sets no limit (nothing checked)."""
    if config.rate is None and not config.models:
        return None
    return RateLimiter(config)


def client_key(authorization: str, address: str, authenticator: Authenticator) -> Any:
    """Who is asking: the digest of a known bearer token, else the address."""
    scheme, _, given = authorization.partition(" ")
    token = given.strip()
    if scheme.lower() == "bearer" and token and authenticator.scopes_of(token) is not None:
        return digest(token)
    return address


def model_label(model: str, known: Callable[[str], bool]) -> str:
    """The ``model`` label of a refusal: clients choose names, so unknown ones share one."""
    from mlp_serve.dataplane import UNKNOWN_MODEL  # the data plane imports this module

    return model if not model or known(model) else UNKNOWN_MODEL


# -- REST ------------------------------------------------------------------------------------


class RateLimitMiddleware:
    """ASGI middleware: refuses a request over its client's limit before its body is read."""

    def __init__(
        self,
        app: Any,
        limiter: RateLimiter,
        authenticator: Authenticator,
        metrics: InferenceMetrics,
        known: Callable[[str], bool],
        protocol: str = "rest",
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.authenticator = authenticator
        self.metrics = metrics
        self.known = known
        self.protocol = protocol

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith(_EXEMPT_PATHS):
            await self.app(scope, receive, send)
            return
        match = _MODEL_PATH.match(path)
        model = urllib.parse.unquote(match.group(1)) if match else OTHER
        authorization = ""
        for key, value in scope.get("headers", ()):
            if key == b"authorization":
                authorization = value.decode("latin-1")
                break
        address = (scope.get("client") or ("unknown", 0))[0]
        client = client_key(authorization, address, self.authenticator)
        try:
            self.limiter.check(client, model)
        except RateLimited as exc:
            self._count(model)
            await _send_429(send, exc)
            return
        await self.app(scope, receive, send)

    def _count(self, model: str) -> None:
        with self.metrics.track_request(model_label(model, self.known), "", self.protocol) as t:
            t.status = RATE_LIMITED


async def _send_429(send: Any, error: RateLimited) -> None:
    import json

    body = json.dumps({"error": error.message}).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
                (b"retry-after", str(error.retry_after_seconds).encode("ascii")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# -- gRPC ------------------------------------------------------------------------------------


class GrpcRateLimit:
    """The same limits for gRPC calls, checked in the call's thread once its body is parsed."""

    def __init__(
        self,
        limiter: RateLimiter,
        authenticator: Authenticator,
        metrics: InferenceMetrics,
        known: Callable[[str], bool],
        protocol: str = "grpc",
    ) -> None:
        self.limiter = limiter
        self.authenticator = authenticator
        self.metrics = metrics
        self.known = known
        self.protocol = protocol

    def check(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        if method in EXEMPT_GRPC_METHODS:
            return
        model = getattr(request, "model_name", None) or getattr(request, "name", None) or OTHER
        authorization = ""
        for key, value in context.invocation_metadata() or ():
            if key.lower() == "authorization":
                authorization = value if isinstance(value, str) else value.decode("latin-1")
                break
        client = client_key(authorization, peer_address(context.peer()), self.authenticator)
        try:
            self.limiter.check(client, model)
        except RateLimited as exc:
            with self.metrics.track_request(
                model_label(model, self.known), "", self.protocol
            ) as tracking:
                tracking.status = RATE_LIMITED
            context.set_trailing_metadata((("retry-after", str(exc.retry_after_seconds)),))
            raise


def peer_address(peer: str) -> str:
    """The address in grpc's peer string without the port: ``ipv4:10.0.0.1:5000`` ->
    ``10.0.0.1``, ``ipv6:[::1]:5000`` -> ``::1``; other forms as they are."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    if kind == "ipv6":
        host = urllib.parse.unquote(rest).rpartition(":")[0] or rest
        return host.strip("[]")
    return peer


def _known_to(dataplane: Any) -> Callable[[str], bool]:
    # The repository's snapshot: safe from any thread, and no disk scan per refusal.
    return lambda model: dataplane.repository.ready_version(model) is not None


def grpc_rate_limit_for(dataplane: Any, authenticator: Authenticator) -> GrpcRateLimit | None:
    """The gRPC check of ``dataplane``'s limiter, or None when no limit is set."""
    limiter = dataplane.rate_limiter
    if limiter is None:
        return None
    return GrpcRateLimit(limiter, authenticator, dataplane.metrics, _known_to(dataplane))


def add_rest_rate_limit(app: Any, dataplane: Any, authenticator: Authenticator) -> None:
    """Add the REST check of ``dataplane``'s limiter to ``app``, if a limit is set. Add it
    before CORS, so that CORS wraps it: a browser can read a 429's Retry-After."""
    limiter = dataplane.rate_limiter
    if limiter is not None:
        app.add_middleware(
            RateLimitMiddleware,
            limiter=limiter,
            authenticator=authenticator,
            metrics=dataplane.metrics,
            known=_known_to(dataplane),
        )
