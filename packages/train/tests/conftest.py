"""Shared fixtures: one finished run of the penguins example through the real `mlp train`,
reused read-only by the run-folder, evaluation and tracking tests."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pytest
from train_helpers import last_line, mlp


@pytest.fixture(scope="session")
def pycache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bytecode of the `mlp` subprocesses, kept between sessions in pytest's cache folder
    (or for this session only, without the cache plugin)."""
    cache = getattr(request.config, "cache", None)
    if cache is None:
        return tmp_path_factory.mktemp("pycache")
    return Path(cache.mkdir("mlp_train_pycache"))


@dataclass
class CliRun:
    run_dir: Path
    runs_root: Path
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def penguins_run(tmp_path_factory: pytest.TempPathFactory, pycache: Path) -> CliRun:
    """`mlp train examples/penguins` as the README runs it, registering the model in MLflow and
    tracking system metrics."""
    root = tmp_path_factory.mktemp("penguins_runs")
    result = mlp(
        "train",
        "examples/penguins",
        "--run-dir",
        str(root),
        "--set",
        "training.tracking.register_model=penguins",
        "--set",
        "training.tracking.system_metrics=true",
        pycache=pycache,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = Path(last_line(result.stdout))
    assert run_dir.is_dir() and run_dir.parent == root
    return CliRun(run_dir, root, result.stdout, result.stderr)


@pytest.fixture(autouse=True)
def _detach_run_logging():
    """In-process runs point the root logger at their run folder and at pytest's captured
    stderr; drop those handlers after each test so no test writes into another's files."""
    yield
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_mlp_obs_handler", False)]:
        root.removeHandler(handler)
        handler.close()
