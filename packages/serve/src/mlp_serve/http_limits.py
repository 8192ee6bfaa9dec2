"""Connection-level limits of the REST front end (uvicorn with httptools), and its TLS.

uvicorn closes an idle keep-alive connection after ``timeout_keep_alive``, but it has no limit
on how long a request's headers may take to arrive, nor (with httptools) on their size: a client
that opens connections and sends its headers a byte at a time (slowloris) holds each of them
for ever. :class:`GuardedHttpToolsProtocol` adds both:

- ``serve.http_header_timeout_seconds``: a connection whose request line and headers are not
  complete this long after it opened (or after the request's first byte, on a kept-alive
  connection) gets 408 and is closed;
- ``serve.http_max_header_bytes``: a request line and headers larger than this get 431 and the
  connection is closed, before more of them is buffered.

``serve.http_keep_alive_seconds`` and ``serve.http_max_concurrency`` are uvicorn's own
``timeout_keep_alive`` and ``limit_concurrency`` (503 beyond it).
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mlp_obs.log import get_logger
from mlp_serve.config import ServeConfig
from mlp_serve.tls import uvicorn_tls_options

log = get_logger(__name__)

_HEADERS_END = b"\r\n\r\n"
_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size limit on each request's headers.

    Subclassed per server by :func:`guarded_protocol` with the limits as class attributes:
    uvicorn makes one protocol object per connection from the class alone.
    """

    header_timeout_seconds: float = 10.0
    max_header_bytes: int = 64 * 1024

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_bytes = 0
        self._in_headers = True
        self._refused = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_headers:
            end = data.find(_HEADERS_END)
            self._header_bytes += len(data) if end < 0 else end + len(_HEADERS_END)
            if self._header_bytes > self.max_header_bytes:
                self._refuse(
                    431,
                    f"the request line and headers are over the limit of "
                    f"{self.max_header_bytes} bytes",
                )
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_headers:  # the next request on a kept-alive connection
            self._in_headers = True
            self._header_bytes = 0
            self._arm()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm()
        super().on_headers_complete()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _timed_out(self) -> None:
        self._header_timer = None
        if not self._in_headers or self.transport.is_closing():
            return
        if self._header_bytes == 0:  # nothing sent at all: nobody to answer
            self.transport.close()
            return
        log.info(
            "closing a connection whose request headers were too slow",
            client=(self.client or ("", 0))[0],
            seconds=self.header_timeout_seconds,
        )
        self._refuse(
            408, f"the request's headers took longer than {self.header_timeout_seconds:g} s"
        )

    def _refuse(self, status: int, message: str) -> None:
        self._refused = True
        self._disarm()
        body = json.dumps({"error": message}).encode("utf-8")
        head = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])
        head += b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body)
        head += b"connection: close\r\n\r\n"
        self.transport.write(head + body)
        self.transport.close()


def guarded_protocol(config: ServeConfig) -> type[GuardedHttpToolsProtocol]:
    """The protocol class with this config's header limits."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "header_timeout_seconds": config.http_header_timeout_seconds,
            "max_header_bytes": config.http_max_header_bytes,
        },
    )


def uvicorn_options(config: ServeConfig) -> dict[str, Any]:
    """uvicorn.Config keyword arguments for the limits and TLS of ``config``."""
    return {
        "http": guarded_protocol(config),
        # uvicorn takes whole seconds.
        "timeout_keep_alive": max(1, math.ceil(config.http_keep_alive_seconds)),
        "limit_concurrency": config.http_max_concurrency,
        # For h11, uvicorn's other HTTP implementation; httptools is limited above.
        "h11_max_incomplete_event_size": config.http_max_header_bytes,
        **uvicorn_tls_options(config.tls),
    }
