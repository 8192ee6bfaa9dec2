"""The bearer-token check, written once for both front ends.

REST reads the ``Authorization`` header, gRPC the ``authorization`` metadata; both hold
``Bearer <token>`` and are checked here, in constant time so the comparison leaks nothing about
how much of a guess was right.
"""

from __future__ import annotations

import hmac

from mlp_serve.errors import Unauthorized


def bearer_matches(header: str, token: str) -> bool:
    """Whether ``header`` (an Authorization value) is ``Bearer <token>``."""
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


def require_bearer(header: str, token: str | None, *, refusal: str, hint: str) -> None:
    """Nothing when ``token`` is None (auth off) or ``header`` carries it; else
    :class:`~mlp_serve.errors.Unauthorized` with ``refusal`` and ``hint``."""
    if token is not None and not bearer_matches(header, token):
        raise Unauthorized(refusal, hint=hint)
