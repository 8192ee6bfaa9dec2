"""Exact resume through the real `mlp train`: a run killed (SIGKILL) or interrupted (SIGINT)
mid-epoch and resumed ends with the weights of the same run left alone, bit for bit.

Dropout draws from the RNG, one-cycle changes the lr every step and the sampler's order depends
on the epoch: a resume that missed any RNG, scheduler, optimizer or data-order state would end
with other weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from train_helpers import (
    PENGUINS_CSV,
    assert_identical,
    last_line,
    mlp,
    model_tensors,
    read_rows,
)

from mlp_train.checkpoint import CheckpointStore

EPOCHS = 3


def overrides(marker: Path, step: int, signal: str) -> list[str]:
    callback = {
        "class": "train_helpers.SignalAtStep",
        "args": {"step": step, "marker": str(marker), "signal": signal},
    }
    options = [
        f"data.path={PENGUINS_CSV}",
        f"training.epochs={EPOCHS}",
        "training.device=cpu",
        "training.deterministic=true",
        "training.tracking.backend=local",
        "model.dropout=0.2",
        "training.scheduler={name: onecycle, max_lr: 0.02}",
        "training.early_stopping=null",
        "training.checkpoint.every_n_steps=3",
        f"training.callbacks={json.dumps([callback])}",
    ]
    return [item for option in options for item in ("--set", option)]


def final_state(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The saved model and the model state of the newest checkpoint."""
    state, _ = CheckpointStore(run_dir / "checkpoints").load_latest()
    return model_tensors(run_dir / "model"), state["model"]


def epoch_rows(run_dir: Path) -> list[dict]:
    return [
        {k: v for k, v in row.items() if k != "epoch_seconds"}
        for row in read_rows(run_dir / "metrics.jsonl")
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, pycache) -> Path:
    """The same run, never interrupted (its callback's step is past the end)."""
    root = tmp_path_factory.mktemp("reference")
    result = mlp(
        "train",
        "examples/penguins",
        "--run-dir",
        str(root),
        *overrides(root / "m", 999, "SIGKILL"),
        pycache=pycache,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(last_line(result.stdout))


def only_run_folder(root: Path) -> Path:
    (run_dir,) = [p for p in root.iterdir() if p.is_dir()]
    return run_dir


def test_sigkill_mid_epoch_then_resume_gives_the_same_weights(tmp_path, reference, pycache):
    root, marker = tmp_path / "runs", tmp_path / "killed"
    # 7 steps per epoch; checkpoints at steps 3, 6, 7 (epoch end), 9; killed after step 11.
    killed = mlp(
        "train",
        "examples/penguins",
        "--run-dir",
        str(root),
        *overrides(marker, 11, "SIGKILL"),
        pycache=pycache,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert marker.read_text() == "11"
    run_dir = only_run_folder(root)
    assert not (run_dir / "model").exists()
    store = CheckpointStore(run_dir / "checkpoints")
    state, path = store.load_latest()
    assert tuple(state["progress"][k] for k in ("step", "epoch", "batch_in_epoch")) == (9, 1, 2)

    resumed = mlp("train", "--resume", str(run_dir), pycache=pycache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert last_line(resumed.stdout) == str(run_dir)
    assert f"resumed from {path}" in (run_dir / "log.jsonl").read_text()

    saved, last = final_state(run_dir)
    reference_saved, reference_last = final_state(reference)
    assert_identical(saved, reference_saved)
    assert_identical(last, reference_last)
    assert epoch_rows(run_dir) == epoch_rows(reference)  # one row per epoch, same numbers
    assert json.loads((run_dir / "metrics.json").read_text()) == json.loads(
        (reference / "metrics.json").read_text()
    )


def test_ctrl_c_checkpoints_exits_130_and_resume_completes(tmp_path, reference, pycache):
    root, marker = tmp_path / "runs", tmp_path / "interrupted"
    stopped = mlp(
        "train",
        "examples/penguins",
        "--run-dir",
        str(root),
        *overrides(marker, 12, "SIGINT"),
        pycache=pycache,
    )
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert "training interrupted at epoch 2, step 12" in stopped.stdout
    assert "resume with: mlp train --resume" in stopped.stdout
    run_dir = only_run_folder(root)
    state, path = CheckpointStore(run_dir / "checkpoints").load_latest()
    # The step in flight finished and was saved, mid-epoch.
    assert tuple(state["progress"][k] for k in ("step", "epoch", "batch_in_epoch")) == (12, 1, 5)
    assert path.name == "last-step00000012-epoch0001.pt"

    resumed = mlp("train", "--resume", str(run_dir), pycache=pycache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert last_line(resumed.stdout) == str(run_dir)
    saved, last = final_state(run_dir)
    reference_saved, reference_last = final_state(reference)
    assert_identical(saved, reference_saved)
    assert_identical(last, reference_last)
    assert epoch_rows(run_dir) == epoch_rows(reference)
