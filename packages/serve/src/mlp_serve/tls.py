"""TLS for both front ends from PEM files: ``serve.tls.cert_file``/``key_file``, and for client
certificates (mTLS) ``client_ca_file`` with ``require_client_cert``.

The files are read and checked once at start (:func:`check_tls`), so a wrong path, a key that
does not match its certificate or an unreadable CA is a config error naming the file, not a
server that starts and fails every handshake. REST gets uvicorn's ``ssl_*`` options, gRPC
``grpc.ssl_server_credentials``. With ``client_ca_file``:

- ``require_client_cert: true``: both front ends refuse a client without a certificate signed
  by that CA (the handshake fails);
- ``require_client_cert: false``: REST asks for a certificate and checks one that is sent, but
  lets clients without one in; gRPC's Python server cannot ask for an optional certificate, so
  it does not ask (use bearer tokens for those clients, or require certificates).

Certificates are read at start: a renewed certificate takes a restart (a rolling one in
Kubernetes) to be served.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from mlp_core.errors import ConfigError
from mlp_serve.config import TlsConfig

_HINT = "Fix serve.tls: cert_file and key_file are PEM files the server can read."


def tls_enabled(tls: TlsConfig) -> bool:
    return tls.cert_file is not None


def check_tls(tls: TlsConfig) -> None:
    """Refuse a TLS config that cannot work, naming the key and file; nothing when TLS is off."""
    if tls.cert_file is None and tls.key_file is None:
        if tls.client_ca_file is not None or tls.require_client_cert:
            raise ConfigError(
                "serve.tls.client_ca_file and require_client_cert need TLS itself: "
                "serve.tls.cert_file and key_file are not set",
                hint=_HINT,
            )
        return
    if tls.cert_file is None or tls.key_file is None:
        missing = "cert_file" if tls.cert_file is None else "key_file"
        raise ConfigError(f"serve.tls.{missing} is not set: TLS needs both files", hint=_HINT)
    if tls.require_client_cert and tls.client_ca_file is None:
        raise ConfigError(
            "serve.tls.require_client_cert needs serve.tls.client_ca_file, the CA that signs "
            "the clients' certificates",
            hint="Set serve.tls.client_ca_file to that CA's PEM file.",
        )
    for key in ("cert_file", "key_file", "client_ca_file"):
        path = getattr(tls, key)
        if path is not None:
            _read(key, path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"serve.tls: the key {tls.key_file} does not load with the certificate "
            f"{tls.cert_file}: {exc.reason or exc}",
            hint="Give the certificate's own private key, unencrypted, in PEM.",
        ) from None
    if tls.client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=tls.client_ca_file)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"serve.tls.client_ca_file {tls.client_ca_file} holds no usable CA "
                f"certificate: {exc.reason or exc}",
                hint="Give the PEM certificate(s) of the CA that signs client certificates.",
            ) from None


def _read(key: str, path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"serve.tls.{key} {path} cannot be read: {exc.strerror}", hint=_HINT
        ) from None
    if b"-----BEGIN" not in data:
        raise ConfigError(f"serve.tls.{key} {path} is not a PEM file", hint=_HINT)
    return data


def uvicorn_tls_options(tls: TlsConfig) -> dict[str, Any]:
    """uvicorn.Config's ``ssl_*`` keyword arguments (none when TLS is off)."""
    if not tls_enabled(tls):
        return {}
    options: dict[str, Any] = {"ssl_certfile": tls.cert_file, "ssl_keyfile": tls.key_file}
    if tls.client_ca_file is not None:
        options["ssl_ca_certs"] = tls.client_ca_file
        options["ssl_cert_reqs"] = (
            ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
        )
    return options


def grpc_server_credentials(tls: TlsConfig) -> Any:
    """``grpc.ServerCredentials`` for ``add_secure_port``, or None when TLS is off."""
    if not tls_enabled(tls):
        return None
    import grpc

    assert tls.cert_file is not None and tls.key_file is not None
    key = _read("key_file", tls.key_file)
    chain = _read("cert_file", tls.cert_file)
    ca = _read("client_ca_file", tls.client_ca_file) if tls.client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, chain)],
        root_certificates=ca if tls.require_client_cert else None,
        require_client_auth=tls.require_client_cert,
    )
