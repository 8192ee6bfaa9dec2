"""Bearer tokens with scopes, written once for both front ends.

REST reads the ``Authorization`` header, gRPC the ``authorization`` metadata; both hold
``Bearer <token>`` and are checked by :meth:`Authenticator.check`. Tokens come from a file (a
mounted Kubernetes Secret, re-read when it changes) or an environment variable, so they never
sit on a command line where ``ps`` shows them; ``serve.auth_token``/``admin_token`` still work.

Each token carries scopes: ``inference`` (inference, model metadata, config and readiness, the
repository index) and ``admin`` (the repository API: load and unload). A missing or unknown
token is 401/UNAUTHENTICATED; a known token without the scope is 403/PERMISSION_DENIED.

Tokens are kept as SHA-256 digests and looked up by the digest of what the client sent, so
the lookup's timing tells nothing about how close a guess was, and no token value is held in a
form a log line or a traceback could print.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from mlp_core.errors import ConfigError
from mlp_obs.log import get_logger
from mlp_serve.errors import InferenceError, Unauthorized

if TYPE_CHECKING:
    from mlp_serve.config import ServeConfig

log = get_logger(__name__)

INFERENCE = "inference"
ADMIN = "admin"
SCOPES = frozenset({INFERENCE, ADMIN})
MIN_TOKEN_LENGTH = 16
# RFC 6750's b64token: what may follow "Bearer " in a header, so every token can be sent.
_TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")

TokenTable = Mapping[bytes, frozenset[str]]


class Forbidden(InferenceError):
    """A known token without the scope the endpoint needs."""

    http_status = 403
    grpc_code = "PERMISSION_DENIED"


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def parse_tokens(text: str, source: str) -> dict[bytes, frozenset[str]]:
    """Tokens from lines ``SCOPES TOKEN`` (scopes comma-separated: ``inference``, ``admin``).

    ``#`` starts a comment; blank lines are skipped; ``;`` separates entries as a newline does
    (handy in an environment variable). A token listed twice gets the union of its scopes.
    Errors name the source and the entry, never the token.
    """
    table: dict[bytes, frozenset[str]] = {}
    entries = (e for line in text.splitlines() for e in line.split("#", 1)[0].split(";"))
    for number, entry in enumerate(entries, start=1):
        fields = entry.split()
        if not fields:
            continue
        where = f"{source}, entry {number}"
        if len(fields) != 2:
            raise ConfigError(
                f"{where}: expected 'SCOPES TOKEN', got {len(fields)} field(s)",
                hint="Write one token a line, e.g. 'inference,admin <token>'.",
            )
        scopes = frozenset(s.strip() for s in fields[0].split(",") if s.strip())
        unknown = sorted(scopes - SCOPES)
        if unknown or not scopes:
            raise ConfigError(
                f"{where}: unknown scope(s) {unknown or [fields[0]]}",
                hint=f"Scopes are {sorted(SCOPES)}, comma-separated, before the token.",
            )
        token = fields[1]
        if not _TOKEN.match(token) or len(token) < MIN_TOKEN_LENGTH:
            raise ConfigError(
                f"{where}: the token is not {MIN_TOKEN_LENGTH}+ characters of "
                "A-Z a-z 0-9 - . _ ~ + / (RFC 6750)",
                hint="Generate one with `openssl rand -hex 32`.",
            )
        key = digest(token)
        table[key] = table.get(key, frozenset()) | scopes
    return table


class TokensFile:
    """A tokens file, re-read when it changes, without a restart.

    A request costs a clock read; at most once every ``reload_seconds`` one of them also
    ``stat``s the file, and reads it only if its inode, size or times changed (a Kubernetes
    Secret update swaps a symlink: a new inode). If the file goes missing, becomes unreadable or
    malformed, the last good tokens stay in force and a warning is logged: the server neither
    opens (no tokens would) nor locks every client out because of a half-written edit. Revoking
    is writing the file without the token, not deleting it.
    """

    def __init__(self, path: str | os.PathLike[str], reload_seconds: float) -> None:
        self.path = Path(path)
        self.reload_seconds = reload_seconds
        self._lock = threading.Lock()
        self._next_check = time.monotonic() + reload_seconds
        self._failing = False
        try:
            self._signature = self._stat()
            self.tokens: TokenTable = self._read()
        except OSError as exc:
            raise ConfigError(
                f"the tokens file {self.path} cannot be read: {exc.strerror}",
                hint="Mount the Secret there, or fix serve.auth.tokens_file.",
            ) from None
        if not self.tokens:
            log.warning(
                "the tokens file holds no tokens: guarded requests are refused", path=str(path)
            )

    def current(self) -> TokenTable:
        if time.monotonic() >= self._next_check:
            self._refresh()
        return self.tokens

    def _stat(self) -> tuple[int, ...]:
        st = os.stat(self.path)
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _read(self) -> dict[bytes, frozenset[str]]:
        return parse_tokens(self.path.read_text(encoding="utf-8"), str(self.path))

    def _refresh(self) -> None:
        # One thread checks; the others go on with the tokens in force rather than wait.
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._next_check = time.monotonic() + self.reload_seconds
            try:
                signature = self._stat()
                if signature == self._signature and not self._failing:
                    return
                tokens = self._read()
            except (OSError, UnicodeDecodeError, ConfigError) as exc:
                self._fail(exc)
                return
            self._signature, self.tokens, self._failing = signature, tokens, False
            log.info(
                "auth tokens reloaded",
                path=str(self.path),
                tokens=len(tokens),
                admin=sum(ADMIN in s for s in tokens.values()),
            )
        finally:
            self._lock.release()

    def _fail(self, exc: Exception) -> None:
        if not self._failing:  # once per failure, not once a second
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            log.warning(
                "the tokens file cannot be used: keeping the last good tokens",
                path=str(self.path),
                reason=reason,
            )
        self._failing = True


class Authenticator:
    """The tokens of one server, from every source its config names, and the check."""

    def __init__(self, config: ServeConfig) -> None:
        auth = config.auth
        static: dict[bytes, frozenset[str]] = {}
        for token, scope in ((config.auth_token, INFERENCE), (config.admin_token, ADMIN)):
            if token is not None:
                static[digest(token)] = static.get(digest(token), frozenset()) | {scope}
        from_env = auth.tokens_env is not None and auth.tokens_env in os.environ
        if from_env:
            assert auth.tokens_env is not None
            parsed = parse_tokens(os.environ[auth.tokens_env], f"${auth.tokens_env}")
            if not parsed:
                raise ConfigError(
                    f"${auth.tokens_env} is set but holds no tokens",
                    hint="Unset it, or give it 'SCOPES TOKEN' entries.",
                )
            for key, scopes in parsed.items():
                static[key] = static.get(key, frozenset()) | scopes
        self._static: dict[bytes, frozenset[str]] = static
        self._file = TokensFile(auth.tokens_file, auth.reload_seconds) if auth.tokens_file else None
        # With a file or the variable, inference always needs a token, even if none has the
        # scope: a rotation that drops the last inference token must not open the server.
        self.inference_guarded = from_env or self._file is not None or config.auth_token is not None
        self.admin_enabled = from_env or self._file is not None or config.admin_token is not None
        sources = [f"${auth.tokens_env}"] if from_env else []
        sources += [str(self._file.path)] if self._file is not None else []
        sources += [k for k in ("auth_token", "admin_token") if getattr(config, k) is not None]
        if sources:  # where the tokens come from and how many, never what they are
            log.info(
                "bearer auth on",
                sources=sources,
                tokens=len(self._static) + len(self._file.tokens if self._file is not None else {}),
            )

    def scopes_of(self, token: str) -> frozenset[str] | None:
        key = digest(token)
        found = self._static.get(key)
        if self._file is not None:
            from_file = self._file.current().get(key)
            if from_file is not None:
                found = from_file if found is None else found | from_file
        return found

    def check(self, header: str, scope: str, *, missing: str, wrong: str, hint: str) -> None:
        """Nothing if ``header`` is ``Bearer <token>`` for a token with ``scope`` (any scope,
        for :data:`ANY`), or the scope is not guarded; else 401 or 403."""
        if scope in (INFERENCE, ANY) and not self.inference_guarded:
            return
        if scope == ADMIN and not self.admin_enabled:
            raise Unauthorized(
                "the repository API is disabled: the server has no admin token",
                hint="Give a token the admin scope in serve.auth.tokens_file to enable it.",
            )
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise Unauthorized(missing, hint=hint)
        scopes = self.scopes_of(given.strip())
        if scopes is None:
            raise Unauthorized(wrong, hint=hint)
        if scope != ANY and scope not in scopes:
            raise Forbidden(
                f"this token lacks the {scope!r} scope",
                hint=f"Use a token with the {scope!r} scope.",
            )


ANY = "any"
"""For :meth:`Authenticator.check`: any known token will do (the repository index)."""


def authenticator_for(config: ServeConfig) -> Authenticator:
    """The config's :class:`Authenticator`, made once, so both front ends share one tokens
    file watcher (and ``mlp serve`` can check the tokens before loading any model)."""
    found = config._authenticator
    if found is None:
        found = Authenticator(config)
        config._authenticator = found
    return found
