"""`mlp train` and `mlp evaluate`: the run folder, the example's accuracy, regression runs and
errors that end in one message and exit code 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from train_helpers import EXAMPLE, PENGUINS_CSV, QUIET, REPO_ROOT, read_rows

from mlp_core.cli import main
from mlp_core.config import dump_config, load_config
from mlp_data import create_adapter
from mlp_models import load_model
from mlp_train.checkpoint import CheckpointStore
from mlp_train.config import TrainConfig
from mlp_train.run import evaluate, train


def assert_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        assert min(image.size) >= 300


def test_the_penguins_example_reaches_95_percent_test_accuracy(penguins_run):
    metrics = json.loads((penguins_run.run_dir / "metrics.json").read_text())
    assert metrics["test.accuracy"] >= 0.95
    # A summary for a person precedes the last stdout line, the run folder.
    *summary, last = penguins_run.stdout.strip().splitlines()
    assert Path(last) == penguins_run.run_dir
    assert any(
        line.startswith(f"test: accuracy {metrics['test.accuracy']:.4f}, ") for line in summary
    )


def test_the_run_folder_holds_everything(penguins_run):
    run = penguins_run.run_dir
    config = load_config(run / "config.yaml", schema=TrainConfig)  # resolved and reloadable
    assert dump_config(config) == (run / "config.yaml").read_text()
    assert config.training.epochs == 40 and config.training.tracking.register_model == "penguins"

    log = read_rows(run / "log.jsonl")
    assert all({"event", "level", "timestamp"} <= row.keys() for row in log)
    assert any(row["event"].startswith("run finished") for row in log)

    epochs = read_rows(run / "metrics.jsonl")
    assert [row["epoch"] for row in epochs] == list(range(len(epochs)))
    assert 0 < len(epochs) <= 40

    store = CheckpointStore(run / "checkpoints")
    kinds = sorted(e.kind for e in store.entries())
    assert kinds == ["best", "last", "last"]
    assert store.load_latest()[0]["progress"]["epoch"] == len(epochs)

    model = load_model(run / "model")
    assert model.model_name == "tabular_mlp" and model.num_classes == 3

    metrics = json.loads((run / "metrics.json").read_text())
    assert {
        "val.loss",
        "val.accuracy",
        "test.loss",
        "test.accuracy",
        "test.f1_macro",
    } <= metrics.keys()

    assert sorted(p.name for p in (run / "plots").iterdir()) == [
        "confusion_matrix_test.png",
        "training_curves.png",
    ]
    for plot in (run / "plots").iterdir():
        assert_png(plot)

    dataset = json.loads((run / "dataset.json").read_text())
    assert dataset["task"] == "classification"
    assert dataset["class_names"] == ["Adelie", "Chinstrap", "Gentoo"]
    assert dataset["sizes"] == {"train": 223, "val": 52, "test": 69}
    preprocessing = json.loads((run / "preprocessing.json").read_text())
    assert preprocessing and isinstance(preprocessing, dict)


def test_the_saved_model_gives_the_test_accuracy_of_metrics_json(penguins_run):
    run = penguins_run.run_dir
    config = load_config(run / "config.yaml", schema=TrainConfig)
    adapter = create_adapter({**config.data.model_dump(), "path": str(PENGUINS_CSV)}).prepare()
    model = load_model(run / "model")
    right = total = 0
    for batch in adapter.loaders(("test",))["test"]:
        right += int((model.predict(batch).argmax(1) == batch["target"]).sum())
        total += len(batch["target"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert right / total == pytest.approx(metrics["test.accuracy"])


def test_mlp_evaluate_recomputes_the_test_metrics_and_rewrites_plots(
    penguins_run, monkeypatch, capsys
):
    run = penguins_run.run_dir
    saved = json.loads((run / "metrics.json").read_text())
    for plot in (run / "plots").iterdir():
        plot.unlink()
    monkeypatch.chdir(REPO_ROOT)  # the config's data path is relative to the repository
    assert main(["evaluate", str(run), "--split", "test"]) == 0
    shown = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    tests = {k: v for k, v in saved.items() if k.startswith("test.")}
    assert shown == {k: round(v, 4) for k, v in tests.items()}
    recomputed = json.loads((run / "metrics.json").read_text())
    for key, value in tests.items():
        assert recomputed[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert sorted(p.name for p in (run / "plots").iterdir()) == [
        "confusion_matrix_test.png",
        "training_curves.png",
    ]


def test_a_regression_run_plots_residuals(tmp_path):
    options = [
        *QUIET,
        "data.target=body_mass_g",
        "data.task=regression",
        "data.validation.on_invalid=drop",  # two rows lack the body mass
        "training.epochs=3",
        "training.checkpoint={monitor: val.rmse, mode: min}",
        "training.early_stopping=null",
    ]
    result = train(EXAMPLE, options, runs_root=tmp_path)
    run = result.run_dir
    assert {"test.rmse", "test.r2", "test.mae", "val.rmse"} <= result.metrics.keys()
    assert json.loads((run / "dataset.json").read_text())["task"] == "regression"
    model = load_model(run / "model")
    assert model.task == "regression"
    assert sorted(p.name for p in (run / "plots").iterdir()) == [
        "residuals_test.png",
        "training_curves.png",
    ]
    values = evaluate(run, "val")
    assert values["val.rmse"] == pytest.approx(result.metrics["val.rmse"], rel=1e-6)
    assert_png(run / "plots" / "residuals_val.png")
    assert torch.isfinite(torch.tensor(list(values.values()))).all()


def test_a_missing_config_is_one_message_and_exit_code_1(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.yaml")]) == 1
    err = capsys.readouterr().err
    assert f"mlp train: error: config {tmp_path / 'nope.yaml'} does not exist" in err
    assert "Traceback" not in err


def test_a_config_with_typos_lists_every_problem_and_exits_1(tmp_path, capsys):
    config = tmp_path / "typos.yaml"
    config.write_text(
        "data: {path: x.csv, target: species}\n"
        "model: {name: tabular_mlp}\n"
        "training: {epocs: 3, optimizer: {name: adamw, lr: -1}}\n"
    )
    assert main(["train", str(config), "--run-dir", str(tmp_path / "runs")]) == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 1
    assert "invalid configuration (2 problems):" in err
    assert f"{config}: training.epocs: unknown key (given 3)" in err
    assert f"{config}: training.optimizer.lr: input should be greater than 0; given -1" in err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()
