"""How long a request may take on the server, and what happens when that time runs out.

Two limits apply: ``serve.request_timeout_seconds`` (the server's, off by default) and, for
gRPC, the client's own deadline. Either way a request still waiting in its model's queue is
withdrawn (its rows never run: :mod:`mlp_serve.batching`) and the caller gets REST 504 or gRPC
DEADLINE_EXCEEDED. A gRPC call the client cancels is withdrawn the same way (grpc tells the
server through the call's termination callback). A REST client that disconnects, or a REST
request past its timeout, is withdrawn as its awaiting task is cancelled.

The time counted is the data plane's part: validation, waiting in the queue and the run, not
reading the request's body (the HTTP limits in :mod:`mlp_serve.http_limits` bound that).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

from mlp_serve.errors import DeadlineExceeded

if TYPE_CHECKING:
    import grpc

    from mlp_serve.config import ServeConfig

T = TypeVar("T")

# grpc reports "no deadline" as a time remaining of years; anything beyond this is none.
_NO_DEADLINE = 365 * 24 * 3600.0


async def within(awaitable: Awaitable[T], config: ServeConfig) -> T:
    """``awaitable``'s result, or :class:`DeadlineExceeded` after the server's request timeout
    (cancelling it: a request still queued is withdrawn)."""
    seconds = config.request_timeout_seconds
    if seconds is None:  # the default: no wrapper, no extra task per request
        return await awaitable
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except asyncio.TimeoutError:
        raise DeadlineExceeded(
            f"the request took longer than serve.request_timeout_seconds ({seconds:g} s)",
            hint="Retry later, send fewer rows, or ask the operator for a longer timeout.",
        ) from None


def grpc_timeout(context: grpc.ServicerContext, config: ServeConfig) -> float | None:
    """Seconds a gRPC call may still wait: the sooner of its deadline and the server's request
    timeout; None if neither is set."""
    remaining = context.time_remaining()
    limits = [config.request_timeout_seconds]
    if remaining is not None and remaining < _NO_DEADLINE:
        limits.append(remaining)
    given = [t for t in limits if t is not None]
    return min(given) if given else None
