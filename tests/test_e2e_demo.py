"""The README's first command, `tools/demo.sh`, as the same sequence of `mlp` commands.

train -> evaluate -> export -> serve (a separate process) -> predict over REST and gRPC ->
SIGTERM -> exit status 0. Every step is a real `mlp` process, as a user runs it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np

READY = re.compile(r"^mlp serve: REST on (http://\S+), gRPC on (\S+)$", re.MULTILINE)


def mlp(bin_dir: Path, *args: str, cwd: Path, env: dict[str, str]) -> list[str]:
    proc = subprocess.run(
        [str(bin_dir / "mlp"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"mlp {args[0]} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout.strip().splitlines()


def wait_until_serving(server: subprocess.Popen, log: Path) -> tuple[str, str]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = READY.search(log.read_text())
        if found:
            return found.group(1), found.group(2)
        assert server.poll() is None, f"mlp serve exited early:\n{log.read_text()}"
        time.sleep(0.2)
    raise AssertionError(f"mlp serve did not report its ports:\n{log.read_text()}")


def test_the_demo_sequence(root, bin_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    requests = root / "examples/penguins/requests.json"

    # As the demo runs it: from the project root, where the example's data path points.
    out = mlp(
        bin_dir,
        *("train", "examples/penguins", "--run-dir", str(tmp_path / "runs")),
        *("--set", "training.epochs=3", "--set", "training.progress=none"),
        cwd=root,
        env=env,
    )
    run = Path(out[-1])
    trained = {k: round(v, 4) for k, v in json.loads((run / "metrics.json").read_text()).items()}
    assert (run / "model").exists() and "test.accuracy" in trained
    assert f"test: accuracy {trained['test.accuracy']:.4f}" in "\n".join(out[:-1])

    evaluated = json.loads(
        mlp(bin_dir, "evaluate", str(run), "--split", "test", cwd=root, env=env)[-1]
    )
    assert evaluated["test.accuracy"] == trained["test.accuracy"]

    repo = tmp_path / "repo"
    out = mlp(
        bin_dir, "export", str(run), "--repo", str(repo), "--name", "penguins", cwd=root, env=env
    )
    summary = json.loads(out[-2])
    assert Path(out[-1]) == repo / "penguins" / "1"
    assert summary["parity"]["passed"] and summary["mlflow"]["logged"] is True

    log = tmp_path / "serve.log"
    with open(log, "w") as sink:
        server = subprocess.Popen(
            [str(bin_dir / "mlp"), "serve", str(repo), "--http-port", "0", "--grpc-port", "0"],
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        http, grpc = wait_until_serving(server, log)
        answers = {}
        for front, where in (("rest", ["--url", http]), ("grpc", ["--grpc", grpc])):
            out = mlp(
                bin_dir,
                *("predict", "penguins", "--json", str(requests), *where),
                cwd=tmp_path,
                env=env,
            )
            answers[front] = json.loads("\n".join(out))["predictions"]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            status = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()  # never leave a server behind; the test fails below
            status = server.wait()
    assert status == 0, log.read_text()
    assert "server stopped" in log.read_text()

    rows = json.loads(requests.read_text())
    labels = ["Adelie", "Chinstrap", "Gentoo"]
    for front in ("rest", "grpc"):
        assert len(answers[front]) == len(rows)
        assert all(a["label"] in labels for a in answers[front])
    rest, grpc_ = (
        np.array([[a["probabilities"][n] for n in labels] for a in answers[f]])
        for f in ("rest", "grpc")
    )
    np.testing.assert_allclose(rest, grpc_, atol=1e-6)
    np.testing.assert_allclose(rest.sum(axis=1), 1.0, atol=1e-5)  # the unseen island too
    assert [a["label"] for a in answers["rest"]] == [a["label"] for a in answers["grpc"]]
