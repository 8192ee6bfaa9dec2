"""The ports a supervisor holds for its workers.

Each port is reserved by a socket with ``SO_REUSEPORT`` that is bound but never listens: it
receives no connections (only listening sockets do), yet it keeps the port this server's while
workers come and go, and it lets each worker bind its own listening socket there (REST and gRPC
alike: grpc takes no socket from outside, so sharing by ``SO_REUSEPORT`` is the one way both front
ends work). The kernel then spreads new connections across the workers' sockets.

Before reserving, a plain bind checks that the port is free: ``SO_REUSEPORT`` alone would also
"succeed" beside another server of the same user that set it, and silently share its traffic.
"""

from __future__ import annotations

import socket

from mlp_core.errors import ServingError


def reserve_port(host: str, port: int, what: str) -> socket.socket:
    """A bound, not listening, ``SO_REUSEPORT`` socket on ``host:port`` (0 picks a free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As the server binds: a port whose old connections linger in TIME_WAIT is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise _busy(host, port, what, exc) from None
        port = probe.getsockname()[1]
    reserved = socket.socket(family, socket.SOCK_STREAM)
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        reserved.bind((host, port))
    except OSError as exc:  # taken between the probe and now
        reserved.close()
        raise _busy(host, port, what, exc) from None
    return reserved


def _busy(host: str, port: int, what: str, exc: OSError) -> ServingError:
    return ServingError(
        f"cannot listen for {what} on {host}:{port}: {exc.strerror}",
        hint=f"Pick another {what} port (0 picks a free one) or stop what uses it.",
    )
