"""Where runs are tracked by default, and the tags every run carries."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from mlp_core.versions import mlp_packages

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
DATABASE_NAME = "mlflow.db"
ARTIFACTS_FOLDER = "mlartifacts"


def tracking_uri(runs_root: str | os.PathLike[str] = "runs") -> str:
    """``MLFLOW_TRACKING_URI`` when set, else a SQLite store in ``<runs_root>/mlflow.db``."""
    from_env = os.environ.get(TRACKING_URI_ENV, "").strip()
    if from_env:
        return from_env
    return sqlite_uri(Path(runs_root) / DATABASE_NAME)


def sqlite_uri(database: str | os.PathLike[str]) -> str:
    return f"sqlite:///{Path(database).resolve().as_posix()}"


def local_database(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, or None for any other store."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    return Path(uri[len(prefix) :])


def default_tags() -> dict[str, str]:
    """The git commit of the current repository (when in one), mlp package versions, Python."""
    tags = {f"mlp.version.{name}": version for name, version in mlp_packages().items()}
    tags["python.version"] = platform.python_version()
    commit = git_commit()
    if commit is not None:
        tags["git.commit"] = commit
        # The tag MLflow's UI shows as the run's source version.
        tags["mlflow.source.git.commit"] = commit
    return tags


def git_commit(cwd: str | os.PathLike[str] | None = None) -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None  # no git, or it hung: a run is still worth tracking
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None
