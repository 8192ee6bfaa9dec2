"""What goes wrong, said clearly: corrupt checkpoints, other models, bad names, NaN losses."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from train_helpers import EXAMPLE, QUIET, read_rows

from mlp_core.errors import CheckpointError, ConfigError, TrainingError
from mlp_train.checkpoint import CheckpointStore, load_checkpoint
from mlp_train.run import train

# No best checkpoints: the "last" ones are the only candidates for a resume.
LAST_ONLY = [*QUIET, "training.checkpoint.save_top_k=0", "training.early_stopping=null"]


def truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_newest_checkpoint_is_reported_and_the_previous_one_used(tmp_path):
    run = train(EXAMPLE, [*LAST_ONLY, "training.epochs=2"], runs_root=tmp_path).run_dir
    folder = run / "checkpoints"
    newest, previous = (
        folder / "last-step00000014-epoch0002.pt",
        folder / "last-step00000007-epoch0001.pt",
    )
    assert {e.file for e in CheckpointStore(folder).entries()} == {newest.name, previous.name}
    truncate(newest)

    train(None, ["training.epochs=3"], resume=run)
    log = read_rows(run / "log.jsonl")
    warnings = [row["event"] for row in log if row["level"] == "warning"]
    assert any(str(newest) in w and "corrupt or truncated" in w for w in warnings), warnings
    assert any(f"resumed from {previous}" in row["event"] for row in log)
    # Epoch 2 ran again from the good checkpoint: still one metrics row per epoch.
    assert [row["epoch"] for row in read_rows(run / "metrics.jsonl")] == [0, 1, 2]
    state, _ = CheckpointStore(folder).load_latest()
    assert (state["progress"]["epoch"], state["progress"]["step"]) == (3, 21)


def test_resuming_with_every_checkpoint_corrupt_is_a_checkpoint_error(tmp_path):
    run = train(EXAMPLE, [*LAST_ONLY, "training.epochs=2"], runs_root=tmp_path).run_dir
    files = sorted((run / "checkpoints").glob("*.pt"))
    assert len(files) == 2
    for file in files:
        truncate(file)
    with pytest.raises(CheckpointError, match="no usable checkpoint") as caught:
        train(None, ["training.epochs=3"], resume=run)
    for file in files:
        assert file.name in caught.value.message


def test_resuming_a_run_of_another_model_is_a_checkpoint_error(tmp_path):
    run = train(EXAMPLE, [*QUIET, "training.epochs=1"], runs_root=tmp_path).run_dir
    other = tmp_path / "other"
    shutil.copytree(EXAMPLE, other)
    model = yaml.safe_load((other / "model_config.yaml").read_text())
    (other / "model_config.yaml").write_text(yaml.safe_dump({**model, "hidden_sizes": [16]}))
    with pytest.raises(CheckpointError, match="other settings than") as caught:
        train(other, QUIET, resume=run)
    assert "tabular_mlp" in caught.value.message
    # An override of the model on resume is caught by the checkpoint's own record.
    with pytest.raises(CheckpointError, match="was written by model 'tabular_mlp'"):
        train(None, ["model.hidden_sizes=[8]"], resume=run)
    with pytest.raises(CheckpointError, match="is not a run folder"):
        train(None, [], resume=tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("training.optimizer.name", "lamb", "'sgd', 'adam' or 'adamw'"),
        ("training.scheduler.name", "linear", "'step', 'cosine', 'onecycle' or 'plateau'"),
    ],
)
def test_unknown_optimizer_or_scheduler_names_the_key_and_the_choices(
    tmp_path, key, value, allowed
):
    with pytest.raises(ConfigError) as caught:
        train(EXAMPLE, [*QUIET, f"{key}={value}"], runs_root=tmp_path)
    message = caught.value.message
    assert f"{key}: input should be {allowed}; given '{value}'" in message
    assert "--set" in message  # the source of the bad value
    assert not list(tmp_path.iterdir())  # nothing was started


@pytest.mark.parametrize(
    "option",
    [
        "training.checkpoint.monitor=val.f2",
        "training.early_stopping={monitor: val.f2}",
        "training.scheduler={name: plateau, monitor: val.f2}",
    ],
)
def test_a_metric_that_does_not_exist_is_a_config_error_listing_valid_names(tmp_path, option):
    with pytest.raises(
        ConfigError, match=r"cannot monitor 'val.f2' for task 'multiclass'"
    ) as caught:
        train(EXAMPLE, [*QUIET, option], runs_root=tmp_path)
    message = caught.value.message
    assert message.startswith("training.")
    valid = message.split("valid names: ")[1].split(", ")
    assert {"val.loss", "val.accuracy", "val.f1_macro", "train.loss"} <= set(valid)


def test_a_nan_loss_is_a_training_error_and_keeps_the_good_checkpoints(tmp_path):
    options = [
        *LAST_ONLY,
        "training.epochs=2",
        "training.scheduler=null",
        "training.optimizer={name: sgd, lr: 1.0e12}",
        "training.checkpoint.every_n_steps=1",
    ]
    with pytest.raises(
        TrainingError, match=r"the training loss became (nan|inf|-inf) at epoch 1"
    ) as caught:
        train(EXAMPLE, options, runs_root=tmp_path)
    assert "the last good checkpoint is kept in" in caught.value.message
    assert "Lower the learning rate" in caught.value.hint
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir() and p.name != "mlartifacts"]
    store = CheckpointStore(run / "checkpoints")
    entries = store.entries()
    assert entries, "a checkpoint was written before the loss went bad"
    failed_step = int(caught.value.message.split("step ")[1].split(";")[0])
    for entry in entries:
        assert entry.step < failed_step
        assert (
            load_checkpoint(store.folder / entry.file, sha256=entry.sha256)["progress"]["step"]
            == entry.step
        )
    json.loads((store.folder / "index.json").read_text())
    assert not (run / "model").exists()  # no final model from a failed run
    tracked = read_rows(run / "tracking.jsonl")
    assert tracked[-1]["event"] == "end_run" and tracked[-1]["status"] == "FAILED"
