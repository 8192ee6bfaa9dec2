"""Helpers of test_stack.py: free ports, tools/stack.sh, plain HTTP, the stack's processes."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "tools" / "stack.sh"
PORT_NAMES = ("HTTP", "GRPC", "PROMETHEUS", "MLFLOW", "TRAIN_METRICS")

T = TypeVar("T")


def free_ports(count: int) -> list[int]:
    """Ports free on loopback right now (all held open together, so they differ)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def stack_env(stack_dir: Path) -> dict[str, str]:
    """The environment of a stack kept in ``stack_dir`` on free ports (never the defaults)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLP_STACK_", "MLFLOW_"))}
    env["MLP_STACK_DIR"] = str(stack_dir)
    env["MLP_STACK_TIMEOUT"] = "400"
    for name, port in zip(PORT_NAMES, free_ports(len(PORT_NAMES))):
        env[f"MLP_STACK_{name}_PORT"] = str(port)
    return env


def stack(command: str, env: dict[str, str], timeout: float = 480) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(STACK), command],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def http_json(url: str, body: Any = None, timeout: float = 30) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        return json.loads(reply.read())


def wait_for(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what} (last seen: {last!r})")


def process_tree(pid: int) -> list[psutil.Process]:
    """``pid`` and every process below it, wherever its session (honcho starts new ones)."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def running(processes: list[psutil.Process]) -> list[str]:
    """Those still running (a zombie is dead: only its parent's reaping is left)."""
    left = []
    for proc in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
    return left


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0
