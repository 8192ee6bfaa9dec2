"""Multi-node DDP as the Kubernetes Job runs it, on loopback: two torchrun agents, one per "node".

deploy/k8s/training starts one `torchrun --nnodes=N --nproc-per-node=M --rdzv-backend=c10d
--rdzv-endpoint=<job>-0.<service>:29500` per pod. Here two such agents run side by side, each with
its own run-folder root (nodes share no disk), meet through c10d rendezvous on 127.0.0.1 (both try
to host the store; the one that binds the port hosts it, the other joins as a client, as on a
cluster where only pod 0's address matches the endpoint) and train penguins over gloo.

What it must match: a single process with the same global batch. Rank r reads positions r, r + 2,
... of each epoch's permutation, so the two ranks' batch i of 8 rows together hold exactly batch i
of 16 rows of the single process; DDP averages the gradients of the two equal halves, which is the
gradient of the mean over 16 (packages/train/tests/test_distributed.py proves this batch
equivalence under `--standalone`; this test runs the same comparison across two agents). The runs
then differ only in the order of float sums: that test measured 9e-8 on the weights and 2e-8 on
the metrics after 45 AdamW steps, two orders of magnitude below the tolerances here.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "penguins"
PENGUINS_CSV = ROOT / "examples" / "data" / "penguins.csv"

NODES = 2
EPOCHS = 2
PER_RANK_BATCH = 8
GLOBAL_BATCH = NODES * PER_RANK_BATCH
# 226 training rows (even, so no rank is padded) and 49 validation rows: see test_distributed.py.
TRAIN_ROWS = 226
SETTINGS = [
    f"data.path={PENGUINS_CSV}",
    "data.split.val=0.14",
    "data.split.test=0.2",
    f"training.epochs={EPOCHS}",
    "training.device=cpu",
    "training.deterministic=true",
    "training.tracking.backend=local",
    "training.progress=plain",
    # BatchNorm statistics and dropout masks are per rank: either would make the runs differ.
    "model.norm=none",
    "model.dropout=0",
]
WEIGHT_ATOL = 1e-5
METRIC_ATOL = 1e-6
TIMEOUT_S = 240  # a rendezvous that never completes ends the test, never the session
JOIN_TIMEOUT_S = 120  # torchrun's own limit on waiting for the other node (default 600)
_MARKER = "MLP_TEST_RDZV_RUN"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _train_command(root: Path, batch_size: int) -> list[str]:
    command = ["-m", "mlp_core.cli", "train", str(EXAMPLE), "--run-dir", str(root)]
    for setting in [*SETTINGS, f"data.batch_size={batch_size}"]:
        command += ["--set", setting]
    return command


def _node_command(root: Path, endpoint: str, run_id: str) -> list[str]:
    """One node's agent, with the flags deploy/k8s/training/job.yaml gives it."""
    launcher = [
        "-m",
        "torch.distributed.run",
        f"--nnodes={NODES}",
        "--nproc-per-node=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={endpoint}",
        f"--rdzv-id={run_id}",
        f"--rdzv-conf=join_timeout={JOIN_TIMEOUT_S}",
        "--max-restarts=0",
    ]
    return [sys.executable, *launcher, *_train_command(root, PER_RANK_BATCH)]


def _start(command: list[str], cwd: Path, marker: str) -> subprocess.Popen[str]:
    cwd.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"  # what torchrun gives each rank; the single run gets the same
    env[_MARKER] = marker  # finds the agents' workers too, should an agent die before them
    return subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _kill_marked(marker: str) -> None:
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.environ().get(_MARKER) == marker:
                process.kill()


def _finish(processes: dict[str, subprocess.Popen[str]], marker: str) -> dict[str, tuple]:
    """Each process's (returncode, stdout, stderr); everything marked is dead afterwards."""
    results: dict[str, tuple] = {}
    try:
        for name, process in processes.items():
            try:
                stdout, stderr = process.communicate(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _kill_marked(marker)
                stdout, stderr = process.communicate(timeout=30)
                pytest.fail(f"{name} hung for {TIMEOUT_S}s:\n{stderr[-3000:]}")
            results[name] = (process.returncode, stdout, stderr)
    finally:
        _kill_marked(marker)  # a failure above must not leave a peer waiting at the rendezvous
    return results


def _run_folders(root: Path) -> list[Path]:
    return [path for path in root.iterdir() if path.is_dir()] if root.is_dir() else []


def _last_checkpoint(run_dir: Path, epoch: int = EPOCHS) -> dict:
    index = json.loads((run_dir / "checkpoints" / "index.json").read_text())["checkpoints"]
    (entry,) = [e for e in index if e["kind"] == "last" and e["epoch"] == epoch]
    return torch.load(
        run_dir / "checkpoints" / entry["file"], map_location="cpu", weights_only=True
    )


def _metric_rows(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("rendezvous")
    endpoint = f"127.0.0.1:{_free_port()}"
    marker = uuid.uuid4().hex
    # The three runs share nothing but the CSV, so they run at once (on 2 cores: ~1 minute).
    processes = {
        f"node{n}": _start(
            _node_command(base / f"node{n}", endpoint, marker), base / f"cwd{n}", marker
        )
        for n in range(NODES)
    }
    processes["single"] = _start(
        [sys.executable, *_train_command(base / "single", GLOBAL_BATCH)],
        base / "cwd-single",
        marker,
    )
    results = _finish(processes, marker)
    for name, (code, _, stderr) in results.items():
        assert code == 0, f"{name} exited {code}:\n{stderr[-4000:]}"
    return {"base": base, "results": results}


def test_the_two_nodes_form_one_group_and_one_node_writes_the_run(runs: dict) -> None:
    base, results = runs["base"], runs["results"]
    folders = {n: _run_folders(base / f"node{n}") for n in range(NODES)}
    writers = [n for n, found in folders.items() if found]
    assert len(writers) == 1, f"expected one node to write the run, found {folders}"
    (writer,) = writers
    (run_dir,) = folders[writer]
    # The node holding global rank 0 reports the run folder; the other prints no run folder.
    assert results[f"node{writer}"][1].splitlines()[-1] == str(run_dir)
    other = next(n for n in range(NODES) if n != writer)
    assert str(base) not in results[f"node{other}"][1]

    checkpoint = _last_checkpoint(run_dir)
    assert checkpoint["world_size"] == NODES
    steps_per_epoch = -(-TRAIN_ROWS // GLOBAL_BATCH)
    assert checkpoint["progress"]["step"] == EPOCHS * steps_per_epoch


def test_two_nodes_match_a_single_process_with_the_same_global_batch(runs: dict) -> None:
    base = runs["base"]
    (ddp_dir,) = [folder for n in range(NODES) for folder in _run_folders(base / f"node{n}")]
    (single_dir,) = _run_folders(base / "single")
    ddp, single = _last_checkpoint(ddp_dir), _last_checkpoint(single_dir)
    assert single["world_size"] == 1
    assert ddp["progress"]["step"] == single["progress"]["step"]
    assert ddp["model"].keys() == single["model"].keys()
    for name, weight in single["model"].items():
        torch.testing.assert_close(ddp["model"][name], weight, rtol=0, atol=WEIGHT_ATOL)

    # The tolerance means something: the last epoch alone moved the weights far more than it.
    before = _last_checkpoint(single_dir, EPOCHS - 1)["model"]
    moved = max((single["model"][k] - before[k]).abs().max().item() for k in before)
    assert moved > 100 * WEIGHT_ATOL

    ddp_rows, single_rows = _metric_rows(ddp_dir), _metric_rows(single_dir)
    assert len(ddp_rows) == len(single_rows) == EPOCHS
    for ddp_row, single_row in zip(ddp_rows, single_rows, strict=True):
        assert ddp_row["step"] == single_row["step"]
        for key in single_row.keys() - {"epoch", "step", "epoch_seconds"}:
            assert ddp_row[key] == pytest.approx(single_row[key], abs=METRIC_ATOL), key
