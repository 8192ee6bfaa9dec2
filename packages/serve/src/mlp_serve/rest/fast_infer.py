"""``POST /v2/models/{model}[/versions/{version}]/infer`` answered in plain ASGI, ahead of FastAPI.

FastAPI's per-request machinery cost about a third of a small model's REST request in-process
(tools/bench/profile_rest.py): its own layers (the OpenTelemetry check, the exception
middlewares, the exit stack), then matching every route in turn, solving the auth dependency
and the path parameters, building a Request and a Response. The inference route is the one a
server answers thousands of times a second, so :class:`ServeApp` matches it first, by one
regular expression, and answers it directly: the same auth check, the same codec and data plane,
the same error answers (:func:`mlp_serve.rest.app.error_response`) as FastAPI's route, which
stays registered for the OpenAPI document (``/docs``) but is no longer reached.

Every middleware added to the app (request ids, the body limit, CORS, rate limits) wraps this
route too, in the same order, inside the same last-resort 500 handler: only FastAPI's own
per-request layers are left out. FastAPI's native OpenTelemetry instrumentation therefore does
not see inference requests; ``/metrics`` and the structured logs do.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI

# Starlette, which FastAPI runs on (declared beside fastapi).
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.types import ASGIApp

from mlp_serve.dataplane import DataPlane
from mlp_serve.rest.codec import HEADER_LENGTH, decode_request, encode_response

_INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
_AUTHORIZATION = b"authorization"
_HEADER_LENGTH = HEADER_LENGTH.encode("ascii")

# check(authorization header) raises the auth error; answer(exception) is the error response.
AuthCheck = Callable[[str], None]
ErrorAnswer = Callable[[Exception], Any]


class ClientGone(Exception):
    """The client disconnected before its body was read: nobody is left to answer."""


class FastInferRoute:
    """The inference route, matched by one regular expression and answered in plain ASGI."""

    def __init__(
        self, dataplane: DataPlane, check_auth: AuthCheck, answer_error: ErrorAnswer, protocol: str
    ) -> None:
        self.dataplane = dataplane
        self.check_auth = check_auth
        self.answer_error = answer_error
        self.protocol = protocol

    @staticmethod
    def path_params(scope: Any) -> dict[str, str | None] | None:
        """The model and version of an inference request's ``scope``; None for any other."""
        if scope["type"] != "http" or scope.get("method") != "POST":
            return None
        found = _INFER_PATH.match(scope["path"])
        return None if found is None else {"model": found[1], "version": found[2]}

    async def handle(self, scope: Any, receive: Any, send: Any) -> None:
        params = scope["path_params"]
        headers = dict(scope["headers"])  # later duplicates win; these two are never repeated
        try:
            self.check_auth(headers.get(_AUTHORIZATION, b"").decode("latin-1"))
            body = await read_body(receive)
            length = headers.get(_HEADER_LENGTH)
            request = decode_request(body, length.decode("latin-1") if length else None)
            response = await self.dataplane.infer(
                params["model"], params["version"], request, self.protocol
            )
            content, response_headers = encode_response(response, request)
        except ClientGone:
            return
        except Exception as exc:  # every failure is an answer, as FastAPI's handlers give it
            await self.answer_error(exc)(scope, receive, send)
            return
        raw_headers = [
            (k.encode("latin-1"), v.encode("latin-1")) for k, v in response_headers.items()
        ]
        raw_headers.append((b"content-length", str(len(content)).encode("ascii")))
        await send({"type": "http.response.start", "status": 200, "headers": raw_headers})
        await send({"type": "http.response.body", "body": content})


class ServeApp(FastAPI):
    """FastAPI, with the inference route (``fast_route``, once set) answered before FastAPI's
    own per-request layers, inside the app's middleware (see the module docstring)."""

    fast_route: FastInferRoute | None = None
    _fast_stack: ASGIApp | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        route = self.fast_route
        if route is not None:
            params = route.path_params(scope)
            if params is not None:
                scope["path_params"], scope["app"] = params, self
                if self._fast_stack is None:
                    self._fast_stack = self._build_fast_stack(route)
                await self._fast_stack(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    def _build_fast_stack(self, route: FastInferRoute) -> ASGIApp:
        """The route inside every middleware added to the app, as Starlette stacks them, and
        the last-resort 500 handler around them all. Built on the first request, as Starlette
        builds its own stack: every middleware is added by then. Starlette's own stack is built
        with it, so that adding a middleware afterwards is refused for both. Each middleware
        class is instantiated once per stack: middleware with state keeps it outside itself
        (the rate limiter's buckets live in the data plane)."""
        if self.middleware_stack is None:
            self.middleware_stack = self.build_middleware_stack()
        handlers = self.exception_handlers
        last_resort = handlers.get(500, handlers.get(Exception))
        app: ASGIApp = route.handle
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        return ServerErrorMiddleware(app, handler=last_resort, debug=self.debug)


async def read_body(receive: Callable[[], Awaitable[Any]]) -> bytes:
    """The whole request body (one chunk, or joined chunks)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if not message.get("more_body", False):
            if not chunks:
                return chunk
            chunks.append(chunk)
            return b"".join(chunks)
        chunks.append(chunk)
