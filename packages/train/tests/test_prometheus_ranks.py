"""A DDP run's ranks each expose their training metrics, labelled ``rank``: `mlp train` under
`torchrun --standalone --nproc-per-node=2` (gloo) with ``training.prometheus: {port, textfile}``
serves rank 0 on ``port`` and rank 1 on ``port + 1``, scraped over HTTP while it trains, and writes
one text file per rank."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from train_helpers import EXAMPLE, PENGUINS_CSV, read_rows, subprocess_env

EPOCHS = 2
RUN_TIMEOUT_S = 300  # a hang ends the test, never the session


def free_port_pair() -> int:
    """A port P with P + 1 free too (rank r serves P + r)."""
    for _ in range(50):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if port >= 65535:
                continue
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no two consecutive free ports on 127.0.0.1")


def by_rank(text: str) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """rank -> {(name, other labels): value}; every sample must carry a rank."""
    found: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = dict(sample.labels)
            rank = labels.pop("rank")
            found.setdefault(rank, {})[(sample.name, tuple(sorted(labels.items())))] = sample.value
    return found


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("ranks")
    port = free_port_pair()
    textfile = root / "training.prom"
    scrapes = {rank: root / f"scrapes-{rank}.jsonl" for rank in ("0", "1")}
    callbacks = [
        {
            "class": "train_helpers.Scraper",
            "args": {"url": f"http://127.0.0.1:{port + int(rank)}/metrics", "path": str(path)},
        }
        for rank, path in scrapes.items()
    ]
    settings = [
        f"data.path={PENGUINS_CSV}",
        "training.device=cpu",
        "training.tracking.backend=local",
        "training.progress=none",
        f"training.epochs={EPOCHS}",
        "training.early_stopping=null",
        f"training.prometheus={{port: {port}, textfile: {textfile}}}",
        f"training.callbacks={json.dumps(callbacks)}",
    ]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node=2", "-m", "mlp_core.cli", "train", str(EXAMPLE)]
    command += ["--run-dir", str(root / "runs")]
    for setting in settings:
        command += ["--set", setting]
    env = {k: v for k, v in subprocess_env().items() if k not in ("RANK", "WORLD_SIZE")}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(
        command, cwd=root, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )
    assert result.returncode == 0, result.stderr[-4000:]
    (run_dir,) = (root / "runs").iterdir()
    return {"port": port, "textfile": textfile, "scrapes": scrapes, "run_dir": run_dir}


def test_each_rank_serves_its_own_series_on_port_plus_rank(ddp_run: dict) -> None:
    run = ddp_run["run_dir"].name
    for rank, path in ddp_run["scrapes"].items():
        # Both ranks run both scrapers after each epoch: 2 bodies per epoch per port.
        bodies = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(bodies) == 2 * EPOCHS
        for body in bodies:
            seen = by_rank(body)
            assert set(seen) == {rank}, f"port of rank {rank} served ranks {set(seen)}"
            assert value(seen[rank], "mlp_training_steps_total", run=run) > 0
            # Each rank's own process; the machine once per node, from local rank 0.
            assert ("process_resident_memory_bytes", ()) in seen[rank]
            machine = ("mlp_system_cpu_utilization_ratio", ()) in seen[rank]
            assert machine == (rank == "0")


def test_each_rank_writes_its_text_file_with_the_run_values(ddp_run: dict) -> None:
    run = ddp_run["run_dir"].name
    textfile: Path = ddp_run["textfile"]
    files = {"0": textfile, "1": textfile.with_name("training.rank1.prom")}
    final = {rank: by_rank(path.read_text())[rank] for rank, path in files.items()}
    last = read_rows(ddp_run["run_dir"] / "metrics.jsonl")[-1]
    steps = {rank: value(seen, "mlp_training_steps_total", run=run) for rank, seen in final.items()}
    # The shards are padded to the same length: both ranks take every optimizer step together.
    assert steps["0"] == steps["1"] == last["step"]
    for seen in final.values():
        assert value(seen, "mlp_training_epochs_total", run=run) == EPOCHS
        assert value(seen, "mlp_training_samples_per_second", run=run) > 0
        # The losses and metrics are summed over the ranks: the run's values, on each rank.
        loss = value(seen, "mlp_training_loss", run=run, split="val")
        assert loss == pytest.approx(last["val.loss"])
        accuracy = value(seen, "mlp_training_metric", run=run, split="val", metric="accuracy")
        assert accuracy == pytest.approx(last["val.accuracy"])


def test_every_rank_server_is_gone_after_the_run(ddp_run: dict) -> None:
    for offset in (0, 1):
        with pytest.raises(urllib.error.URLError, match="Connection refused"):
            urllib.request.urlopen(
                f"http://127.0.0.1:{ddp_run['port'] + offset}/metrics", timeout=5
            )
