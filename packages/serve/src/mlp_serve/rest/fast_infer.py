"""``POST /v2/models/{model}[/versions/{version}]/infer`` answered in plain ASGI, ahead of FastAPI.

FastAPI's per-request machinery (matching every route in turn, solving the auth dependency and
the path parameters, building a Request and a Response) cost about a third of a small model's
REST request in-process (tools/bench/profile_rest.py). The inference route is the one a server
answers thousands of times a second, so it is matched first, by one regular expression, and
answered directly: the same auth check, the same codec and data plane, the same error answers
(:func:`mlp_serve.rest.app.error_response`) as FastAPI's route, which stays registered for the
OpenAPI document (``/docs``) but is no longer reached.

The route sits in the router, inside every middleware (request ids, the body limit, CORS, rate
limits), so whatever wraps the app wraps it too.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

# Starlette's routing, which FastAPI's router runs on (declared beside fastapi).
from starlette.routing import BaseRoute, Match, NoMatchFound

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


class FastInferRoute(BaseRoute):
    """The inference route, matched by one regular expression and answered in plain ASGI."""

    def __init__(
        self, dataplane: DataPlane, check_auth: AuthCheck, answer_error: ErrorAnswer, protocol: str
    ) -> None:
        self.dataplane = dataplane
        self.check_auth = check_auth
        self.answer_error = answer_error
        self.protocol = protocol

    def matches(self, scope: Any) -> tuple[Match, Any]:
        if scope["type"] != "http" or scope.get("method") != "POST":
            return Match.NONE, {}
        found = _INFER_PATH.match(scope["path"])
        if found is None:
            return Match.NONE, {}
        return Match.FULL, {"path_params": {"model": found[1], "version": found[2]}}

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

    # BaseRoute's abstract API for url_for(): this route has no name to build URLs from.
    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        raise NoMatchFound(name, path_params)


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
