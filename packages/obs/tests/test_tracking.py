from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mlp_core.errors import ConfigError, MissingDependencyError
from mlp_core.versions import mlp_packages
from mlp_obs.tracking import (
    JsonlTracker,
    create_tracker,
    default_tags,
    factory,
    read_events,
    tracking_uri,
)

CONFIG = {
    "data": {"adapter": "csv", "batch_size": 32},
    "model": {"name": "mlp", "hidden": [64, 32]},
    "training": {"epochs": 3, "lr": 0.001},
}
FLAT_PARAMS = {
    "data.adapter": "csv",
    "data.batch_size": "32",
    "model.name": "mlp",
    "model.hidden": "[64, 32]",
    "training.epochs": "3",
    "training.lr": "0.001",
}


@pytest.fixture(autouse=True)
def no_tracking_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """A git repository with one commit, as the current directory."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "README.md").write_text("demo\n")
    git = ["git", "-c", "user.name=mlp", "-c", "user.email=mlp@example.invalid", "-C", str(root)]
    for args in (["init", "-q"], ["add", "README.md"], ["commit", "-q", "-m", "init"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
    monkeypatch.chdir(root)
    return root, head.stdout.strip()


def track_a_run(tracker, run_dir: Path) -> str:
    """Log a little of everything; returns the run id."""
    model_dir = run_dir / "model"
    model_dir.mkdir(parents=True)
    (model_dir / "model.onnx").write_bytes(b"onnx bytes")
    (run_dir / "metrics.csv").write_text("epoch,loss\n0,1.0\n")
    run_id = tracker.start_run("penguins-mlp", experiment="tabular", tags={"team": "ml"})
    with tracker:
        tracker.log_params(CONFIG)
        for step, loss in enumerate([0.9, 0.5, 0.3]):
            tracker.log_metrics({"train.loss": loss, "val.accuracy": 1 - loss}, step=step)
        tracker.log_artifact(run_dir / "metrics.csv")
        tracker.log_artifact(model_dir, "model")
        tracker.set_tags({"stage": "trained"})
        tracker.version = tracker.register_model("penguins", "model")
    return run_id


def assert_run_in_mlflow(client: MlflowClient, run_id: str, commit: str | None) -> None:
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "penguins-mlp"
    assert client.get_experiment(run.info.experiment_id).name == "tabular"
    assert run.data.params == FLAT_PARAMS
    history = client.get_metric_history(run_id, "train.loss")
    assert [(m.step, m.value) for m in history] == [(0, 0.9), (1, 0.5), (2, 0.3)]
    assert len(client.get_metric_history(run_id, "val.accuracy")) == 3
    assert {a.path for a in client.list_artifacts(run_id)} == {"metrics.csv", "model"}
    assert [a.path for a in client.list_artifacts(run_id, "model")] == ["model/model.onnx"]
    tags = run.data.tags
    assert (tags["team"], tags["stage"]) == ("ml", "trained")
    assert tags["python.version"] == ".".join(map(str, sys.version_info[:3]))
    for package, version in mlp_packages().items():
        assert tags[f"mlp.version.{package}"] == version
    assert "mlp.version.mlp-obs" in tags
    if commit is not None:
        assert tags["git.commit"] == tags["mlflow.source.git.commit"] == commit


def test_local_sqlite_store(tmp_path: Path, project: tuple[Path, str]) -> None:
    cwd, commit = project
    runs_root = tmp_path / "runs"
    run_dir = runs_root / "20260101-000000-penguins"

    tracker = create_tracker(run_dir)
    run_id = track_a_run(tracker, run_dir)

    assert tracker.version == "1"
    assert tracking_uri(runs_root) == f"sqlite:///{runs_root.resolve()}/mlflow.db"
    client = MlflowClient(tracking_uri(runs_root))
    assert_run_in_mlflow(client, run_id, commit)
    version = client.get_model_version("penguins", "1")
    assert version.run_id == run_id
    assert version.source.endswith(f"{run_id}/artifacts/model")
    stored = list((runs_root / "mlartifacts").rglob("model.onnx"))
    assert [p.read_bytes() for p in stored] == [b"onnx bytes"]
    assert sorted(p.name for p in cwd.iterdir()) == [".git", "README.md"]  # nothing leaked here

    events = read_events(run_dir)
    assert [e["event"] for e in events] == [
        "start_run", "log_params",
        "log_metrics", "log_metrics", "log_metrics",
        "log_artifact", "log_artifact", "set_tags", "register_model", "end_run",
    ]  # fmt: skip
    assert {e["run_id"] for e in events} == {run_id}
    assert events[0]["tags"]["git.commit"] == commit
    assert events[1]["params"] == FLAT_PARAMS
    assert events[3]["step"] == 1
    assert events[3]["metrics"] == {"train.loss": 0.5, "val.accuracy": 0.5}
    assert events[6]["path"] == str((run_dir / "model").resolve())
    assert events[8]["version"] == "1"
    assert events[-1]["status"] == "FINISHED"
    assert all(e["time"].endswith("+00:00") for e in events)


def test_tracking_server(tmp_path: Path, mlflow_server) -> None:
    run_dir = tmp_path / "runs" / "to-server"
    tracker = create_tracker(run_dir, tracking_uri=mlflow_server.uri)
    run_id = track_a_run(tracker, run_dir)

    client = MlflowClient(mlflow_server.uri)
    assert_run_in_mlflow(client, run_id, default_tags().get("git.commit"))
    assert client.get_model_version("penguins", tracker.version).run_id == run_id
    assert client.get_run(run_id).info.artifact_uri.startswith("mlflow-artifacts:")
    # The server, not this process, wrote the files: they sit in its artifacts destination.
    assert len(list(mlflow_server.artifacts.rglob("model.onnx"))) == 1
    assert not (tmp_path / "runs" / "mlflow.db").exists()
    assert read_events(run_dir)[0]["run_id"] == run_id


def test_environment_uri_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_server
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    assert tracking_uri(tmp_path) == mlflow_server.uri
    tracker = create_tracker(tmp_path / "runs" / "env")
    run_id = tracker.start_run("from-env")
    tracker.end_run()
    assert MlflowClient(mlflow_server.uri).get_run(run_id).info.run_name == "from-env"
    assert not (tmp_path / "runs" / "mlflow.db").exists()


def test_failed_and_killed_runs(tmp_path: Path) -> None:
    runs_root = tmp_path / "runs"
    failing = create_tracker(runs_root / "failing")
    failed_id = failing.start_run("failing")
    with pytest.raises(ValueError, match="diverged"), failing:
        failing.log_metrics({"loss": float("inf")}, step=0)
        raise ValueError("loss diverged")
    interrupted = create_tracker(runs_root / "interrupted")
    killed_id = interrupted.start_run("interrupted")
    with pytest.raises(KeyboardInterrupt), interrupted:
        raise KeyboardInterrupt

    client = MlflowClient(tracking_uri(runs_root))
    assert client.get_run(failed_id).info.status == "FAILED"
    assert client.get_run(killed_id).info.status == "KILLED"
    assert client.get_run(failed_id).info.end_time is not None
    assert read_events(runs_root / "failing")[-1]["status"] == "FAILED"
    assert read_events(runs_root / "interrupted")[-1]["status"] == "KILLED"
    assert failing.run_id is None


def test_without_mlflow_runs_are_recorded_locally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setattr(factory, "_missing_mlflow_warned", False)
    caplog.set_level(logging.WARNING, logger=factory.__name__)

    run_ids = []
    for name in ("first", "second"):
        run_dir = tmp_path / "runs" / name
        tracker = create_tracker(run_dir)
        assert tracker.remote is None
        run_ids.append(track_a_run(tracker, run_dir))
        events = read_events(run_dir)
        assert [e["event"] for e in events][:2] == ["start_run", "log_params"]
        assert events[1]["params"] == FLAT_PARAMS
        assert sum(e["event"] == "log_metrics" for e in events) == 3
        assert events[-2] == {**events[-2], "event": "register_model", "version": None}
        assert events[-1]["status"] == "FINISHED"
        assert tracker.version is None

    warnings = [r for r in caplog.records if "MLflow is not installed" in r.getMessage()]
    assert len(warnings) == 1
    assert "tracking.jsonl" in warnings[0].getMessage()
    assert "pip install 'mlp-obs[mlflow]'" in warnings[0].getMessage()
    assert len(set(run_ids)) == 2
    assert not (tmp_path / "runs" / "mlflow.db").exists()

    with pytest.raises(MissingDependencyError, match="MLflow") as raised:
        create_tracker(tmp_path / "runs" / "third", backend="mlflow")
    assert raised.value.hint == "pip install 'mlp-obs[mlflow]'"


def test_local_backend_and_bad_backend(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "local"
    tracker = create_tracker(run_dir, backend="local")
    assert tracker.remote is None
    tracker.start_run("local")
    tracker.end_run()
    assert [e["event"] for e in read_events(run_dir)] == ["start_run", "end_run"]
    assert not (tmp_path / "runs" / "mlflow.db").exists()
    with pytest.raises(ConfigError, match="unknown tracking backend 'wandb'"):
        create_tracker(run_dir, backend="wandb")


def test_jsonl_tracker_alone(tmp_path: Path) -> None:
    tracker = JsonlTracker(tmp_path)
    run_id = tracker.start_run("alone", tags={"k": 1})
    tracker.log_params({"a": {"b": {"c": None}}, "empty": {}})
    with pytest.raises(ValueError, match="run status"):
        tracker.end_run("DONE")
    tracker.end_run()
    lines = (tmp_path / "tracking.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert events[0]["run_id"] == events[1]["run_id"] == run_id
    assert events[0]["tags"] == {"k": "1"}
    assert events[1]["params"] == {"a.b.c": "None", "empty": "{}"}
    assert events[2]["status"] == "FINISHED"


def test_default_tags_outside_a_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    tags = default_tags()
    assert "git.commit" not in tags
    assert "mlflow.source.git.commit" not in tags
    assert tags["mlp.version.mlp-core"] == mlp_packages()["mlp-core"]


def test_importing_mlp_obs_does_not_import_mlflow() -> None:
    code = (
        "import sys, mlp_obs.tracking, mlp_obs.metrics, mlp_obs.log; print('mlflow' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_a_resumed_run_continues_the_same_mlflow_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = create_tracker(run_dir, runs_root=tmp_path)
    run_id = first.start_run("resumable")
    first.log_metrics({"loss": 1.0}, step=0)
    first.end_run("KILLED")

    again = create_tracker(run_dir, runs_root=tmp_path)
    assert again.start_run("resumable", run_id=run_id) == run_id
    again.log_metrics({"loss": 0.5}, step=1)
    again.end_run()

    client = MlflowClient(tracking_uri(tmp_path))
    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5)]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1
