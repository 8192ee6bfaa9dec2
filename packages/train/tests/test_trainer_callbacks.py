"""Callbacks in real runs: early stopping (and its state across a resume), checkpoints kept,
metrics files, progress output and user callbacks named by import path."""

from __future__ import annotations

import csv
import json
import re

import pytest
from train_helpers import EXAMPLE, QUIET, read_rows

from mlp_core.errors import ConfigError
from mlp_train.checkpoint import CheckpointStore, load_checkpoint
from mlp_train.run import train

STEPS_PER_EPOCH = 7  # 223 training rows in batches of 32

# The loss barely moves (lr 1e-9) and improving means falling by 0.1: every epoch after the
# first is "no improvement", so patience 2 stops after epoch 4.
FLAT = [
    *QUIET,
    "training.optimizer.name=sgd",
    "training.optimizer.lr=1e-9",
    "training.scheduler=null",
    "training.early_stopping={monitor: val.loss, mode: min, patience: 2, min_delta: 0.1}",
]


def test_early_stopping_stops_after_patience(tmp_path):
    result = train(EXAMPLE, [*FLAT, "training.epochs=10"], runs_root=tmp_path)
    rows = read_rows(result.run_dir / "metrics.jsonl")
    assert [row["epoch"] for row in rows] == [0, 1, 2, 3]
    logged = (result.run_dir / "log.jsonl").read_text()
    assert "early stopping: val.loss did not improve for 3 epochs" in logged


def test_early_stopping_state_survives_resume(tmp_path):
    first = train(EXAMPLE, [*FLAT, "training.epochs=2"], runs_root=tmp_path)
    assert len(read_rows(first.run_dir / "metrics.jsonl")) == 2
    # Restored (best, wait=1): two more epochs reach wait 3. Forgotten, it would run four more.
    train(None, ["training.epochs=10"], resume=first.run_dir)
    rows = read_rows(first.run_dir / "metrics.jsonl")
    assert [row["epoch"] for row in rows] == [0, 1, 2, 3]


@pytest.mark.parametrize("mode", ["min", "max"])
def test_model_checkpoint_keeps_two_last_and_top_k_best(tmp_path, mode):
    result = train(
        EXAMPLE,
        [
            *QUIET,
            "training.epochs=5",
            "training.early_stopping=null",
            "training.checkpoint.monitor=val.loss",
            f"training.checkpoint.mode={mode}",
            "training.checkpoint.save_top_k=2",
            "training.checkpoint.every_n_steps=3",
        ],
        runs_root=tmp_path,
    )
    store = CheckpointStore(result.run_dir / "checkpoints")
    entries = store.entries()
    last = sorted(e.step for e in entries if e.kind == "last")
    assert last == [33, 35]  # the step-33 one mid-epoch, the last epoch's end
    losses = [row["val.loss"] for row in read_rows(result.run_dir / "metrics.jsonl")]
    best = sorted(losses, reverse=mode == "max")[:2]
    kept = sorted((e for e in entries if e.kind == "best"), key=lambda e: e.value)
    assert [e.value for e in kept] == pytest.approx(sorted(best))
    assert all(e.monitor == "val.loss" for e in kept)
    on_disk = {p.name for p in store.folder.iterdir()}
    assert on_disk == {e.file for e in entries} | {"index.json"}
    chosen = store.best(mode)
    assert chosen is not None and chosen.value == pytest.approx(best[0])
    for entry in entries:  # every file kept is whole and loadable
        assert (
            load_checkpoint(store.folder / entry.file, sha256=entry.sha256)["progress"]["step"]
            == entry.step
        )


def test_metrics_logger_writes_one_row_per_epoch_in_jsonl_and_csv(tmp_path):
    result = train(EXAMPLE, [*QUIET, "training.epochs=3"], runs_root=tmp_path)
    rows = read_rows(result.run_dir / "metrics.jsonl")
    with open(result.run_dir / "metrics.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == [0, 1, 2]
    assert [row["step"] for row in rows] == [7, 14, 21]
    assert len(table) == len(rows)
    for row, line in zip(rows, table):
        assert set(line) == set(row)
        for key, value in row.items():
            assert float(line[key]) == pytest.approx(value, rel=1e-12), key
        assert {"train.loss", "val.loss", "val.accuracy", "lr"} <= row.keys()


def test_progress_prints_plain_lines_when_not_on_a_terminal(penguins_run):
    # The session run's stderr is a pipe: plain lines, one per epoch, no carriage returns.
    assert "\r" not in penguins_run.stderr
    lines = [line for line in penguins_run.stderr.splitlines() if line.startswith("epoch ")]
    epochs = len(read_rows(penguins_run.run_dir / "metrics.jsonl"))
    summaries = [line for line in lines if " step " not in line]
    assert len(summaries) == epochs
    for number, line in enumerate(summaries, start=1):
        assert re.match(
            rf"epoch {number}/40 train\.loss \d+\.\d{{4}} val\.loss .* eta \d+s\)$", line
        )
    # Every log_every_n_steps (50) optimizer steps, a step line.
    steps = [line for line in lines if " step " in line]
    assert len(steps) == epochs * STEPS_PER_EPOCH // 50
    assert re.match(r"epoch 8/40 step 50 loss \d+\.\d{4}$", steps[0])


def test_progress_bar_mode_draws_a_tqdm_bar(tmp_path, capsys):
    train(EXAMPLE, [*QUIET, "training.epochs=2", "training.progress=bar"], runs_root=tmp_path)
    err = capsys.readouterr().err
    assert "\r" in err  # tqdm redraws in place
    # (tqdm redraws at most every 0.1 s, so which counts appear depends on the speed.)
    assert re.search(rf"\repoch 1/2: +\d+%\|.*\| \d/{STEPS_PER_EPOCH} \[", err)
    assert re.search(rf"\repoch 2/2: +\d+%\|.*\| \d/{STEPS_PER_EPOCH} \[", err)
    assert re.search(r"(^|\r)epoch 2/2 train\.loss", err, re.MULTILINE)  # the summary line


def test_user_callback_from_import_path_sees_hooks_in_order(tmp_path):
    path = tmp_path / "hooks.jsonl"
    spec = json.dumps([{"class": "train_helpers.Recorder", "args": {"path": str(path)}}])
    train(EXAMPLE, [*QUIET, "training.epochs=2", f"training.callbacks={spec}"], runs_root=tmp_path)
    rows = read_rows(path)
    epoch = ["on_train_epoch_start", *["on_train_step_end"] * STEPS_PER_EPOCH, "on_epoch_end"]
    assert [row["hook"] for row in rows] == ["on_fit_start", *epoch, *epoch, "on_fit_end"]
    steps = [row["at"] for row in rows if row["hook"] == "on_train_step_end"]
    assert steps == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    ends = [row for row in rows if row["hook"] == "on_epoch_end"]
    assert [row["at"] for row in ends] == [0, 1]
    assert {"train.loss", "val.loss", "val.accuracy", "lr"} <= set(ends[0]["metrics"])


@pytest.mark.parametrize(
    ("path", "problem"),
    [("train_helpers.NoSuchCallback", "has no attribute"), ("no_such_module.Thing", "No module")],
)
def test_a_bad_callback_import_path_is_a_config_error(tmp_path, path, problem):
    spec = json.dumps([{"class": path}])
    with pytest.raises(ConfigError, match=f"training.callbacks: cannot import '{path}'") as caught:
        train(EXAMPLE, [*QUIET, f"training.callbacks={spec}"], runs_root=tmp_path)
    assert problem in caught.value.message
