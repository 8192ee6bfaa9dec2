"""ASGI middleware of the REST server: request ids, access logs and the request-size limit.

The access log (one line per request) is off unless ``serve.access_log`` is set, as in Triton:
a structured line costs more than answering a small model's request (at INFO it took ``mlp
serve`` from 3,200 to 1,100-2,300 requests/s on one core), and request counts, latencies and
statuses are in ``/metrics`` anyway. Errors are logged whatever the setting, with the request id.

Written against raw ASGI rather than Starlette's ``BaseHTTPMiddleware`` so that bodies stream
through untouched (no copy, no extra task per request) and the size limit can stop a chunked
upload as soon as it passes the limit, before the whole body is in memory.
"""

from __future__ import annotations

import json
import random
import re
import time
from typing import Any

from mlp_obs.log import bind_context, get_logger
from mlp_serve.errors import PayloadTooLarge

access_log = get_logger("mlp_serve.access")

REQUEST_ID_HEADER = b"x-request-id"
# A client's id is echoed into logs and headers: keep it short and printable.
_VALID_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
# Request ids need to be unique, not secret: a seeded PRNG gives uuid4-sized hex without the
# getrandom() system call that uuid4 makes per request (slow in sandboxes such as gVisor).
_ids = random.Random()


class RequestContext:
    """Gives each request an id (the client's ``X-Request-ID`` or a new one), binds it to every
    log line of the request, returns it in the response, and logs one access line when
    ``access_log``."""

    def __init__(self, app: Any, access_log: bool = False) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, REQUEST_ID_HEADER)
        request_id = given if given and _VALID_ID.match(given) else f"{_ids.getrandbits(128):032x}"
        scope.setdefault("state", {})["request_id"] = request_id
        id_header = (REQUEST_ID_HEADER, request_id.encode("ascii"))
        status = 500
        start = time.perf_counter() if self.access_log else 0.0

        async def send_with_id(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        with bind_context(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                if self.access_log:
                    access_log.info(
                        "request",
                        method=scope.get("method"),
                        path=scope.get("path"),
                        status=status,
                        ms=round((time.perf_counter() - start) * 1000, 3),
                        client=(scope.get("client") or ("", 0))[0],
                    )


class BodyLimit:
    """Answers 413 to a body over ``max_bytes``: at once when Content-Length says so, and as
    soon as a streamed (chunked) body passes it otherwise."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared, chunked = None, False
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                declared = value
            elif key == b"transfer-encoding":
                chunked = True
        if declared is not None and declared.isdigit():
            if int(declared) > self.max_bytes:
                await _send_error(send, 413, self._message(int(declared)))
                return
            if not chunked:
                # The HTTP parser delivers exactly Content-Length bytes: nothing to count.
                await self.app(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the endpoint's body read: the error handlers answer 413.
                    raise PayloadTooLarge(self._message(received))
            return message

        await self.app(scope, limited_receive, send)

    def _message(self, size: int) -> str:
        return (
            f"the request body ({size} bytes or more) is over the limit of {self.max_bytes} bytes"
        )


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


async def _send_error(send: Any, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
