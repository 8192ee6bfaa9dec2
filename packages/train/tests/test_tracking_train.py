"""The session's penguins run, read back from the default local MLflow store (SQLite in the
runs folder) through MLflow's own client."""

from __future__ import annotations

import subprocess
from importlib.metadata import version

import pytest
import yaml
from mlflow.tracking import MlflowClient
from train_helpers import REPO_ROOT, read_rows

from mlp_core.config import flatten


@pytest.fixture(scope="module")
def tracked(penguins_run):
    database = penguins_run.runs_root / "mlflow.db"
    assert database.is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{database}")
    experiment = client.get_experiment_by_name("penguins")
    (run,) = client.search_runs(
        [experiment.experiment_id], f"attributes.run_name = '{penguins_run.run_dir.name}'"
    )
    return client, run, penguins_run.run_dir


def test_params_are_the_flattened_resolved_config(tracked):
    _, run, run_dir = tracked
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    expected = {key: str(value) for key, value in flatten(config).items()}
    assert run.data.params == expected
    assert run.data.params["training.optimizer.lr"] == "0.01"
    assert run.data.params["model.hidden_sizes"] == "[64, 32]"


def test_metrics_have_one_value_per_epoch_with_steps(tracked):
    client, run, run_dir = tracked
    epochs = read_rows(run_dir / "metrics.jsonl")
    for key in ("train.loss", "val.loss", "val.accuracy", "lr"):
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == list(range(len(epochs)))
        assert [m.value for m in history] == pytest.approx([row[key] for row in epochs])
    assert run.data.metrics["final.test.accuracy"] >= 0.95
    assert run.info.status == "FINISHED"


def test_artifacts_hold_config_plots_model_and_best_checkpoint(tracked):
    client, run, run_dir = tracked
    run_id = run.info.run_id
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "metrics.json", "plots", "model", "checkpoints"} <= top
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert plots == {"plots/training_curves.png", "plots/confusion_matrix_test.png"}
    assert [a.path for a in client.list_artifacts(run_id, "model")] == ["model/model"]
    (best,) = client.list_artifacts(run_id, "checkpoints")
    assert best.path.startswith("checkpoints/best-") and best.file_size > 0
    assert (run_dir / best.path).is_file()


def test_tags_hold_the_git_commit_and_package_versions(tracked):
    _, run, _ = tracked
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    tags = run.data.tags
    assert tags["git.commit"] == head
    for package in ("mlp-core", "mlp-data", "mlp-models", "mlp-obs", "mlp-train"):
        assert tags[f"mlp.version.{package}"] == version(package)


def test_register_model_creates_a_model_version(tracked):
    client, run, _ = tracked
    versions = client.search_model_versions("name = 'penguins'")
    mine = [v for v in versions if v.run_id == run.info.run_id]
    assert len(mine) == 1
    assert mine[0].source.endswith("/model")
    assert client.get_registered_model("penguins").name == "penguins"


def test_system_metrics_on_request_come_with_every_epoch(tracked):
    client, run, run_dir = tracked
    epochs = len(read_rows(run_dir / "metrics.jsonl"))
    for name in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
        history = client.get_metric_history(run.info.run_id, name)
        assert [m.step for m in history] == list(range(epochs)), name
    memory = client.get_metric_history(run.info.run_id, "system/process_memory_rss_megabytes")
    assert all(m.value > 50 for m in memory)  # a torch process holds far more than 50 MiB
