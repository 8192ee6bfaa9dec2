"""Bearer tokens from a file or an environment variable, with scopes, rotated without a restart.

Real servers on loopback: REST with httpx, gRPC with tritonclient.grpc; the last test starts
``mlp serve`` itself and looks at its argv (as ``ps`` shows it) and its logs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from serve_helpers import cpu_config, linear_model, wait_for, write_bundle
from tritonclient.utils import InferenceServerException

from mlp_core.errors import ConfigError
from mlp_serve.auth import Authenticator, parse_tokens
from mlp_serve.server import BackgroundServer

BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
INFER_TOKEN = "infer-0123456789abcdef"
ADMIN_TOKEN = "admin-0123456789abcdef"
BOTH_TOKEN = "both-0123456789abcdef"
NEW_TOKEN = "rotated-0123456789abcdef"
TOKENS = f"# scopes token\ninference {INFER_TOKEN}\nadmin {ADMIN_TOKEN}\n\ninference,admin {BOTH_TOKEN}\n"
STARTUP = re.compile(r"mlp serve: REST on (http://\S+), gRPC on (\S+)")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def infer_status(url: str, token: str | None) -> int:
    headers = bearer(token) if token else {}
    return httpx.post(f"{url}/v2/models/linear/infer", json=BODY, headers=headers).status_code


def grpc_infer_code(address: str, token: str | None) -> str:
    tensor = triton_grpc.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    headers = {"authorization": f"Bearer {token}"} if token else None
    with triton_grpc.InferenceServerClient(address) as client:
        try:
            client.infer("linear", [tensor], headers=headers)
        except InferenceServerException as exc:
            return str(exc.status())
    return "OK"


def test_the_tokens_format_its_scopes_and_errors_that_never_show_a_token():
    table = parse_tokens(f"{TOKENS}admin {INFER_TOKEN}  # now both\n", "tokens")
    assert len(table) == 3
    assert set(table.values()) == {frozenset({"inference", "admin"}), frozenset({"admin"})}
    assert len(parse_tokens(f"inference {INFER_TOKEN}; admin {ADMIN_TOKEN}", "env")) == 2
    assert parse_tokens("# nothing\n\n", "tokens") == {}
    for text, expected in (
        (f"reader {INFER_TOKEN}", "unknown scope"),
        (INFER_TOKEN, "expected 'SCOPES TOKEN'"),
        ("inference short", "16+ characters"),
        ("inference bad\u00e9token-0123456789", "16+ characters"),
    ):
        with pytest.raises(ConfigError) as caught:
            parse_tokens(f"inference {ADMIN_TOKEN}\n{text}\n", "/etc/mlp/tokens")
        message = str(caught.value)
        assert expected in message and "/etc/mlp/tokens, entry 2" in message
        assert INFER_TOKEN not in message and "short" not in message.split(":", 1)[1]


def test_tokens_from_the_environment_with_scopes_on_rest(repo, monkeypatch):
    write_bundle(repo, "linear", 1, linear_model())
    monkeypatch.setenv("MLP_SERVE_TOKENS", f"inference {INFER_TOKEN};admin {ADMIN_TOKEN}")
    with BackgroundServer(repo, cpu_config()) as server:
        url = server.http_url
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200
        assert httpx.get(f"{url}/metrics").status_code == 200
        assert httpx.get(f"{url}/v2").status_code == 200
        assert infer_status(url, None) == 401
        assert infer_status(url, "wrong-0123456789abcdef") == 401
        assert infer_status(url, INFER_TOKEN) == 200
        refused = httpx.post(
            f"{url}/v2/models/linear/infer", json=BODY, headers=bearer(ADMIN_TOKEN)
        )
        assert refused.status_code == 403
        assert "lacks the 'inference' scope" in refused.json()["error"]

        unload = f"{url}/v2/repository/models/linear/unload"
        assert httpx.post(unload).status_code == 401
        assert httpx.post(unload, headers=bearer(INFER_TOKEN)).status_code == 403
        index = f"{url}/v2/repository/index"
        assert httpx.post(index).status_code == 401
        for token in (INFER_TOKEN, ADMIN_TOKEN):  # the read-only index takes either scope
            assert httpx.post(index, headers=bearer(token)).status_code == 200
        assert httpx.post(unload, headers=bearer(ADMIN_TOKEN)).status_code == 200
        assert infer_status(url, INFER_TOKEN) == 503  # unloaded: the admin token did it


def test_an_empty_variable_is_an_error_and_a_renamed_or_disabled_one_is_read_or_not(
    repo, monkeypatch
):
    monkeypatch.setenv("MLP_SERVE_TOKENS", " # none\n")
    with pytest.raises(ConfigError, match=r"\$MLP_SERVE_TOKENS is set but holds no tokens"):
        Authenticator(cpu_config())
    assert not Authenticator(cpu_config(auth={"tokens_env": None})).inference_guarded
    monkeypatch.setenv("OTHER_TOKENS", f"inference {INFER_TOKEN}")
    other = Authenticator(cpu_config(auth={"tokens_env": "OTHER_TOKENS"}))
    assert other.scopes_of(INFER_TOKEN) == {"inference"}


def test_tokens_file_scopes_on_grpc_and_rotation_without_a_restart(repo, tmp_path):
    write_bundle(repo, "linear", 1, linear_model())
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS)
    config = cpu_config(auth={"tokens_file": str(tokens), "reload_seconds": 0.1})
    with BackgroundServer(repo, config) as server:
        url = server.http_url
        assert server.ports is not None
        address = server.ports.grpc_address
        assert grpc_infer_code(address, None) == "StatusCode.UNAUTHENTICATED"
        assert grpc_infer_code(address, "wrong-0123456789abcdef") == "StatusCode.UNAUTHENTICATED"
        assert grpc_infer_code(address, ADMIN_TOKEN) == "StatusCode.PERMISSION_DENIED"
        assert grpc_infer_code(address, INFER_TOKEN) == "OK"
        assert grpc_infer_code(address, BOTH_TOKEN) == "OK"
        with triton_grpc.InferenceServerClient(address) as client:
            assert client.is_server_live() and client.is_server_ready()
            assert client.get_server_metadata().name  # open, as REST's GET /v2
            with pytest.raises(InferenceServerException) as caught:
                client.get_model_metadata("linear")
            assert caught.value.status() == "StatusCode.UNAUTHENTICATED"

        # A Kubernetes Secret update: the new content lands in a new file swapped in.
        staged = tmp_path / "tokens.new"
        staged.write_text(f"inference {NEW_TOKEN}\nadmin {ADMIN_TOKEN}\n")
        os.replace(staged, tokens)
        wait_for(lambda: infer_status(url, NEW_TOKEN) == 200)
        assert infer_status(url, INFER_TOKEN) == 401
        assert grpc_infer_code(address, INFER_TOKEN) == "StatusCode.UNAUTHENTICATED"
        assert grpc_infer_code(address, NEW_TOKEN) == "OK"

        # An edit in place (same inode) is seen too.
        tokens.write_text(f"inference {INFER_TOKEN}\n")
        wait_for(lambda: infer_status(url, INFER_TOKEN) == 200)
        assert infer_status(url, NEW_TOKEN) == 401
        unload = f"{url}/v2/repository/models/linear/unload"
        assert httpx.post(unload, headers=bearer(ADMIN_TOKEN)).status_code == 401

        # Every inference token dropped: inference is refused, not opened.
        tokens.write_text(f"admin {ADMIN_TOKEN}\n")
        wait_for(lambda: infer_status(url, ADMIN_TOKEN) == 403)
        assert infer_status(url, None) == 401 and infer_status(url, INFER_TOKEN) == 401


def test_a_missing_or_broken_tokens_file_keeps_the_last_good_tokens(repo, tmp_path):
    write_bundle(repo, "linear", 1, linear_model())
    tokens = tmp_path / "tokens"
    tokens.write_text(f"inference {INFER_TOKEN}\n")
    config = cpu_config(auth={"tokens_file": str(tokens), "reload_seconds": 0})
    with BackgroundServer(repo, config) as server:
        url = server.http_url
        tokens.unlink()
        for _ in range(3):  # checked on every request (reload_seconds 0)
            assert infer_status(url, INFER_TOKEN) == 200
            assert infer_status(url, None) == 401
        tokens.write_text(f"inference {NEW_TOKEN}\nnot a valid line\n")
        assert infer_status(url, INFER_TOKEN) == 200
        assert infer_status(url, NEW_TOKEN) == 401
        if os.geteuid() != 0:  # root reads a file whatever its mode
            tokens.write_text(f"inference {NEW_TOKEN}\n")
            tokens.chmod(0)
            assert infer_status(url, INFER_TOKEN) == 200
            assert infer_status(url, NEW_TOKEN) == 401
            tokens.chmod(0o600)
        tokens.write_text(f"inference {NEW_TOKEN}\n")
        assert infer_status(url, NEW_TOKEN) == 200
        assert infer_status(url, INFER_TOKEN) == 401


def test_a_server_does_not_start_without_a_usable_tokens_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        Authenticator(cpu_config(auth={"tokens_file": str(tmp_path / "absent")}))
    broken = tmp_path / "tokens"
    broken.write_text(f"inference {INFER_TOKEN}\nsuperuser {ADMIN_TOKEN}\n")
    with pytest.raises(ConfigError, match="entry 2: unknown scope") as caught:
        Authenticator(cpu_config(auth={"tokens_file": str(broken)}))
    assert ADMIN_TOKEN not in str(caught.value)


def test_legacy_keys_still_work_alongside_the_file(repo, tmp_path):
    write_bundle(repo, "linear", 1, linear_model())
    tokens = tmp_path / "tokens"
    tokens.write_text(f"admin {ADMIN_TOKEN}\n")
    config = cpu_config(auth_token="legacy", auth={"tokens_file": str(tokens)})
    with BackgroundServer(repo, config) as server:
        assert infer_status(server.http_url, "legacy") == 200
        assert infer_status(server.http_url, ADMIN_TOKEN) == 403


def _mlp() -> str:
    found = Path(sys.executable).parent / "mlp"
    assert found.exists(), f"no mlp entry point next to {sys.executable}"
    return str(found)


def test_mlp_serve_with_a_tokens_file_shows_no_token_in_ps_or_its_logs(repo, tmp_path):
    write_bundle(repo, "linear", 1, linear_model())
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS)
    config = tmp_path / "serve.yaml"
    config.write_text(f"serve:\n  auth:\n    tokens_file: {tokens}\n    reload_seconds: 0\n")
    log_file = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "MLP_SERVE_TOKENS"}
    # DEBUG: the most the server ever logs; stderr and stdout both go to the file.
    with log_file.open("w") as sink:
        process = subprocess.Popen(
            [
                _mlp(),
                "serve",
                str(repo),
                "--config",
                str(config),
                "--http-port",
                "0",
                "--grpc-port",
                "0",
                "--log-level",
                "DEBUG",
                "--set",
                "poll_seconds=null",
                "--set",
                "providers=[CPUExecutionProvider]",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            deadline = time.monotonic() + 60
            while not (match := STARTUP.search(log_file.read_text())):
                assert process.poll() is None, log_file.read_text()
                assert time.monotonic() < deadline, "no startup line"
                time.sleep(0.1)
            url, address = match.group(1), match.group(2)
            argv = subprocess.run(
                ["ps", "-ww", "-o", "args=", "-p", str(process.pid)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            assert "serve.yaml" in argv  # the right process
            assert infer_status(url, INFER_TOKEN) == 200
            assert infer_status(url, ADMIN_TOKEN) == 403
            assert infer_status(url, "guess-0123456789abcdef") == 401
            assert grpc_infer_code(address, INFER_TOKEN) == "OK"
            assert grpc_infer_code(address, ADMIN_TOKEN) == "StatusCode.PERMISSION_DENIED"
            tokens.write_text(f"inference {NEW_TOKEN}\n")
            assert infer_status(url, NEW_TOKEN) == 200
            tokens.write_text(f"inference {NEW_TOKEN}\nbroken\n")
            assert infer_status(url, NEW_TOKEN) == 200
        finally:
            process.terminate()
            process.wait(30)
    logs = log_file.read_text()
    assert "auth tokens reloaded" in logs and "keeping the last good tokens" in logs
    for secret in (INFER_TOKEN, ADMIN_TOKEN, BOTH_TOKEN, NEW_TOKEN, "guess-0123456789abcdef"):
        assert secret not in logs and secret not in argv
