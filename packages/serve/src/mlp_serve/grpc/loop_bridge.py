"""From a gRPC call's thread to the data plane's event loop and back.

grpc's sync server answers each call in a pool thread, while the data plane's state lives on one
asyncio loop. Work that touches that state (metadata, health, errors about models that are not
ready) is handed to the loop with ``asyncio.run_coroutine_threadsafe`` and waited for, within
the call's deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import grpc

from mlp_serve.errors import ModelUnavailable


class LoopBridge:
    """Runs work on the data plane's event loop from a call's thread and waits for its result."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def run(
        self, coro: Coroutine[Any, Any, Any], context: grpc.ServicerContext | None = None
    ) -> Any:
        """``coro``'s result, within the call's deadline. With ``context``, the coroutine is
        cancelled if the call ends first (the client left, the deadline passed)."""
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError:  # the loop is closed: the server is going away
            coro.close()
            raise ModelUnavailable("the server is shutting down") from None
        timeout = threading.TIMEOUT_MAX
        if context is not None:
            context.add_callback(functools.partial(_cancel, future))
            timeout = min(context.time_remaining(), timeout)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def call(
        self, fn: Callable[..., Any], *args: Any, context: grpc.ServicerContext | None = None
    ) -> Any:
        """``fn(*args)``, run on the loop (the data plane's state is only ever touched there)."""
        return self.run(_call(fn, args), context)


async def _call(fn: Callable[..., Any], args: tuple) -> Any:
    return fn(*args)


def _cancel(future: concurrent.futures.Future[Any]) -> None:
    # A callback for grpc, which wants one returning None (Future.cancel returns a bool).
    future.cancel()
