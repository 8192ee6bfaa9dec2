"""Shared fixtures: a real MLflow tracking server on loopback, started once per session."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SERVER_START_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class MlflowServer:
    uri: str
    artifacts: Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    root = tmp_path_factory.mktemp("mlflow-server")
    artifacts = root / "artifacts"
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log_path = root / "server.log"
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
        # Artifacts go through the server (mlflow-artifacts:/), as clients of a remote server
        # see them, and land in this session's folder.
        "--serve-artifacts",
        "--artifacts-destination", str(artifacts),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    # The job runner (huey consumers for GenAI scorers) is not needed for tracking; it slows the
    # start and its processes outlive the server.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    with log_path.open("wb") as log:
        # A session of its own, so that stopping it stops the uvicorn workers it spawns too.
        process = subprocess.Popen(
            command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_healthy(uri, process, log_path)
        yield MlflowServer(uri=uri, artifacts=artifacts)
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_healthy(uri: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"mlflow server exited with {process.returncode}:\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(
        f"mlflow server not healthy after {SERVER_START_TIMEOUT_S:.0f} s:\n{_tail(log_path)}"
    )


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:]
