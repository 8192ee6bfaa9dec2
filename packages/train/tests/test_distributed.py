"""DDP on the CPU: `mlp train` under `torchrun --standalone --nproc-per-node=2` (gloo).

What matches what: rank r reads positions r, r + 2, r + 4, ... of the epoch's permutation
(:class:`mlp_data.EpochSampler`), so its batch i of B samples holds positions 2iB + r, 2iB + r + 2,
..., and the two ranks' batch i together hold positions [2iB, 2iB + 2B): exactly the samples of
batch i of a single process with batch 2B and the same seed. Each rank's loss is the mean over its
B samples and DDP averages the gradients, which is the gradient of the mean over the 2B samples
whenever both ranks hold as many samples - true for every batch, the short last one included, when
the number of training rows is even. The two runs then take the same optimizer steps and differ only
in the order of float sums (measured: final weights within 9e-8 of each other after 45 AdamW steps,
epoch metrics within 2e-8; asserted with margin below). An odd number of training rows is padded
with the epoch's first sample so both ranks take the same number of steps (no hang), which makes
that run differ from a single process by the repeated sample: it is checked on its own.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import torch
from torch.utils.data import DataLoader

from mlp_data.loaders import UnifiedLoader
from mlp_data.sampler import EpochSampler

REPO_ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = REPO_ROOT / "examples" / "penguins"
PENGUINS_CSV = REPO_ROOT / "examples" / "data" / "penguins.csv"

EPOCHS = 3
PER_RANK_BATCH = 8
GLOBAL_BATCH = 2 * PER_RANK_BATCH
# val 0.14 / test 0.2 of the 344 penguins leave 226 training rows (even, not a multiple of 16:
# the last global batch holds 2 rows, one per rank) and 49 validation rows (odd: the ranks
# evaluate 25 and 24, and their summed metrics must still be those of the 49).
EVEN_SPLIT = ["data.split.val=0.14", "data.split.test=0.2"]
EVEN_TRAIN_ROWS, ODD_VAL_ROWS = 226, 49
# The example's own split leaves 223 training rows: rank 1 gets one padded sample.
ODD_TRAIN_ROWS = 223

# Float reduction order is the only difference between the DDP and the single-process run; the
# measured gap is 9e-8 on the weights and 2e-8 on the metrics, two orders of magnitude below these.
WEIGHT_ATOL = 1e-5
METRIC_ATOL = 1e-6
RUN_TIMEOUT_S = 300  # a hang ends the test, never the session
_MARKER = "MLP_TEST_DDP_RUN"


@dataclass
class Run:
    root: Path
    run_dir: Path
    stdout: str
    stderr: str


def _train(root: Path, overrides: list[str], *, ranks: int) -> Run:
    """`mlp train` over the penguins example, under torchrun when ``ranks`` > 1."""
    root.mkdir(parents=True)
    settings = [
        f"data.path={PENGUINS_CSV}",
        "training.device=cpu",
        "training.deterministic=true",
        "training.tracking.backend=local",
        "training.progress=plain",
        # BatchNorm statistics are per rank and dropout masks are per rank: both would differ.
        "model.norm=none",
        "model.dropout=0",
        *overrides,
    ]
    command = ["-m", "mlp_core.cli", "train", str(EXAMPLE), "--run-dir", str(root)]
    for setting in settings:
        command += ["--set", setting]
    if ranks > 1:
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
        command = launcher + command
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"  # what torchrun gives each rank; the single run gets the same
    # torchrun's workers may outlive it (and hold the pipes): a marker finds them all on a hang.
    env[_MARKER] = uuid.uuid4().hex
    process = subprocess.Popen(
        [sys.executable, *command],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _kill_marked(env[_MARKER])
        stdout, stderr = process.communicate(timeout=30)
        pytest.fail(f"`mlp train` on {ranks} rank(s) hung for {RUN_TIMEOUT_S}s:\n{stderr[-3000:]}")
    assert process.returncode == 0, stderr[-4000:]
    folders = [path for path in root.iterdir() if path.is_dir()]
    assert len(folders) == 1, f"expected one run folder in {root}, found {folders}"
    return Run(root, folders[0], stdout, stderr)


def _kill_marked(marker: str) -> None:
    """Kill the launcher and every worker of one `_train` call (found by its marker)."""
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.environ().get(_MARKER) == marker:
                process.kill()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    base = tmp_path_factory.mktemp("ddp")
    common = [*EVEN_SPLIT, f"training.epochs={EPOCHS}", "training.log_every_n_steps=5"]
    return {
        "ddp": _train(base / "ddp", [*common, f"data.batch_size={PER_RANK_BATCH}"], ranks=2),
        "single": _train(base / "single", [*common, f"data.batch_size={GLOBAL_BATCH}"], ranks=1),
    }


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _checkpoint(run_dir: Path, kind: str, epoch: int) -> dict:
    index = json.loads((run_dir / "checkpoints" / "index.json").read_text())["checkpoints"]
    (entry,) = [e for e in index if e["kind"] == kind and e["epoch"] == epoch]
    path = run_dir / "checkpoints" / entry["file"]
    return torch.load(path, map_location="cpu", weights_only=True)


def _tracking_events(run_dir: Path) -> list[tuple]:
    """What was tracked, without times and values (rank 0's step losses are its own shard's)."""
    return [
        (
            e["event"],
            e.get("step"),
            tuple(sorted(e.get("metrics", {}))),
            Path(e.get("path", "")).name,
        )
        for e in _jsonl(run_dir / "tracking.jsonl")
    ]


def test_the_data_makes_both_ranks_take_an_uneven_last_batch(runs: dict[str, Run]) -> None:
    sizes = json.loads((runs["ddp"].run_dir / "dataset.json").read_text())["sizes"]
    assert sizes["train"] == EVEN_TRAIN_ROWS and sizes["val"] == ODD_VAL_ROWS
    assert EVEN_TRAIN_ROWS % GLOBAL_BATCH != 0 and EVEN_TRAIN_ROWS % 2 == 0
    single = json.loads((runs["single"].run_dir / "dataset.json").read_text())["sizes"]
    assert single == sizes


def test_ddp_writes_one_run_folder_and_reports_it_once(runs: dict[str, Run]) -> None:
    run = runs["ddp"]
    assert run.run_dir.parent == run.root
    lines = run.stdout.splitlines()
    assert lines[-1] == str(run.run_dir)
    assert lines.count(str(run.run_dir)) == 1  # rank 1 prints nothing
    for name in ("config.yaml", "dataset.json", "metrics.json", "tracking.jsonl", "model"):
        assert (run.run_dir / name).is_file(), name
    leftovers = [p.name for p in run.run_dir.rglob("*") if ".tmp" in p.name]
    assert leftovers == []


def test_only_rank_zero_logs_tracks_and_checkpoints(runs: dict[str, Run]) -> None:
    ddp, single = runs["ddp"].run_dir, runs["single"].run_dir
    rows = _jsonl(ddp / "metrics.jsonl")
    assert [row["epoch"] for row in rows] == list(range(EPOCHS))
    csv_lines = (ddp / "metrics.csv").read_text().splitlines()
    assert len(csv_lines) == EPOCHS + 1 and csv_lines[0].startswith("epoch,")

    events = _tracking_events(ddp)
    assert [event for event, n in Counter(events).items() if n > 1] == []
    assert Counter(name for name, *_ in events)["start_run"] == 1
    assert events == _tracking_events(single)

    # The same checkpoints, written once (a second writer would also race on index.json).
    files = sorted(p.name for p in (ddp / "checkpoints").iterdir())
    assert files == sorted(p.name for p in (single / "checkpoints").iterdir())

    # One progress line per epoch on the terminal, and one "run finished" log record.
    summaries = [line for line in runs["ddp"].stderr.splitlines() if " train.loss " in line]
    assert len(summaries) == EPOCHS
    finished = [r for r in _jsonl(ddp / "log.jsonl") if "run finished" in r.get("event", "")]
    assert len(finished) == 1


def test_ddp_matches_a_single_process_with_the_same_global_batch(runs: dict[str, Run]) -> None:
    ddp_dir, single_dir = runs["ddp"].run_dir, runs["single"].run_dir
    ddp = _checkpoint(ddp_dir, "last", EPOCHS)
    single = _checkpoint(single_dir, "last", EPOCHS)
    assert (ddp["world_size"], single["world_size"]) == (2, 1)
    steps_per_epoch = math.ceil(EVEN_TRAIN_ROWS / GLOBAL_BATCH)
    assert ddp["progress"]["step"] == single["progress"]["step"] == EPOCHS * steps_per_epoch

    assert ddp["model"].keys() == single["model"].keys()
    for name, weight in single["model"].items():
        torch.testing.assert_close(ddp["model"][name], weight, rtol=0, atol=WEIGHT_ATOL)

    # The tolerance is far below what one epoch of training moves the weights.
    before = _checkpoint(single_dir, "last", EPOCHS - 1)["model"]
    moved = max((single["model"][k] - before[k]).abs().max().item() for k in before)
    assert moved > 100 * WEIGHT_ATOL

    # The epoch metrics agree as well: train.loss averaged over the ranks' samples, val metrics
    # summed over the ranks' unpadded shards of the 49 validation rows.
    ddp_rows = _jsonl(ddp_dir / "metrics.jsonl")
    single_rows = _jsonl(single_dir / "metrics.jsonl")
    assert len(ddp_rows) == len(single_rows) == EPOCHS
    for ddp_row, single_row in zip(ddp_rows, single_rows, strict=True):
        assert ddp_row["step"] == single_row["step"]
        for key in single_row.keys() - {"epoch", "step", "epoch_seconds"}:
            assert ddp_row[key] == pytest.approx(single_row[key], abs=METRIC_ATOL), key


def test_an_odd_number_of_training_rows_is_padded_and_does_not_hang(tmp_path: Path) -> None:
    run = _train(
        tmp_path / "odd", ["training.epochs=1", f"data.batch_size={PER_RANK_BATCH}"], ranks=2
    )
    sizes = json.loads((run.run_dir / "dataset.json").read_text())["sizes"]
    assert sizes["train"] == ODD_TRAIN_ROWS
    (row,) = _jsonl(run.run_dir / "metrics.jsonl")
    # Both ranks take ceil(ceil(223 / 2) / 8) = 14 steps: rank 1's last batch holds the pad.
    per_rank = math.ceil(ODD_TRAIN_ROWS / 2)
    assert row["step"] == math.ceil(per_rank / PER_RANK_BATCH) == 14
    assert 0 < row["train.loss"] < 10


def test_global_batches_are_the_single_process_batches() -> None:
    """The claim the comparison above rests on, for every batch of several epochs."""
    for epoch in range(3):
        single = EpochSampler(EVEN_TRAIN_ROWS, seed=42)
        shards = [EpochSampler(EVEN_TRAIN_ROWS, seed=42, rank=r, world_size=2) for r in (0, 1)]
        for sampler in (single, *shards):
            sampler.set_epoch(epoch)
        order = single.order()
        local = [shard.order() for shard in shards]
        assert len(local[0]) == len(local[1]) == EVEN_TRAIN_ROWS // 2
        for start in range(0, EVEN_TRAIN_ROWS // 2, PER_RANK_BATCH):
            stop = start + PER_RANK_BATCH
            together = local[0][start:stop] + local[1][start:stop]
            assert sorted(together) == sorted(order[2 * start : 2 * stop])
            assert len(local[0][start:stop]) == len(local[1][start:stop])


def test_training_shards_are_padded_and_evaluation_shards_are_not() -> None:
    shards = [EpochSampler(ODD_TRAIN_ROWS, seed=7, rank=r, world_size=2) for r in (0, 1)]
    order = EpochSampler(ODD_TRAIN_ROWS, seed=7).order()
    taken = shards[0].order() + shards[1].order()
    assert [len(shard) for shard in shards] == [112, 112]
    counts = Counter(taken)
    assert set(counts) == set(range(ODD_TRAIN_ROWS))
    assert [i for i, n in counts.items() if n > 1] == [order[0]]  # the pad repeats the first

    # Val and test: every row once over the ranks, nothing repeated (uneven shards are fine,
    # evaluation runs no collective per batch).
    dataset = list(range(ODD_VAL_ROWS))
    seen = []
    for rank in (0, 1):
        factory = UnifiedLoader(batch_size=10, distributed=True, rank=rank, world_size=2)
        loader: DataLoader = factory.loader(dataset, "val")
        seen.append([int(i) for batch in loader for i in batch])
    assert [len(s) for s in seen] == [25, 24]
    assert sorted(seen[0] + seen[1]) == dataset

    train_loader = UnifiedLoader(batch_size=10, distributed=True, rank=1, world_size=2).loader(
        dataset, "train"
    )
    assert len(train_loader.sampler) == 25  # type: ignore[arg-type]
