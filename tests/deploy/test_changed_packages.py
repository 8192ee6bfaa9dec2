"""tools/changed_packages.py on a temporary git repository holding the real packages' pyprojects."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "changed_packages.py"
ALL = ["core", "data", "models", "obs", "serve", "train"]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path) -> Path:
    """A repository with the workspace's layout: the six pyprojects, a source file each, the root
    pyproject, uv.lock, tools/ci and docs; one commit on main."""
    repo = tmp_path / "repo"
    for pyproject in ROOT.glob("packages/*/pyproject.toml"):
        folder = repo / "packages" / pyproject.parent.name
        (folder / "src").mkdir(parents=True)
        shutil.copy(pyproject, folder / "pyproject.toml")
        (folder / "src" / "module.py").write_text("x = 1\n")
    shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
    (repo / "uv.lock").write_text("version = 1\n")
    (repo / "tools" / "ci").mkdir(parents=True)
    (repo / "tools" / "ci" / "test_packages.sh").write_text("#!/bin/sh\n")
    (repo / "docs").mkdir()
    (repo / "docs" / "deployment.md").write_text("# Deployment\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "base")
    git(repo, "checkout", "-q", "-b", "change")
    return repo


def matrix(repo: Path, base: str = "main", *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(repo), "--base", base, *extra],
        capture_output=True,
        text=True,
        check=False,
    )


def packages_after(repo: Path, *paths: str) -> list[str]:
    """Append a line to each path, commit, and return the matrix's packages."""
    for path in paths:
        file = repo / path
        file.parent.mkdir(parents=True, exist_ok=True)
        with file.open("a") as out:
            out.write("# changed\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "change")
    result = matrix(repo)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["package"]


@pytest.mark.parametrize(
    ("changed", "expected"),
    [
        ("packages/core/src/module.py", ALL),  # everything depends on mlp-core
        ("packages/obs/src/module.py", ["obs", "serve", "train"]),
        ("packages/data/src/module.py", ["data", "train"]),
        # mlp-serve depends on mlp-models through its `export` extra
        ("packages/models/src/module.py", ["models", "serve", "train"]),
        ("packages/train/src/module.py", ["train"]),
        ("packages/serve/pyproject.toml", ["serve"]),
        ("uv.lock", ALL),
        ("pyproject.toml", ALL),
        ("tools/ci/test_packages.sh", ALL),
        ("docs/deployment.md", []),
        ("deploy/k8s/base/deployment.yaml", []),
    ],
)
def test_a_change_selects_the_package_and_its_dependents(repo, changed, expected):
    assert packages_after(repo, changed) == expected


def test_two_changes_select_the_union_in_dependency_order(repo):
    assert packages_after(repo, "packages/train/src/module.py", "packages/data/src/x.py") == [
        "data",
        "train",
    ]


def test_the_edges_are_read_from_the_pyprojects(repo):
    # Give mlp-data a dependency on mlp-obs in the base: a change to mlp-obs now selects it too.
    data = repo / "packages/data/pyproject.toml"
    data.write_text(
        data.read_text().replace('"numpy>=1.24",', '"numpy>=1.24",\n    "mlp_obs>=0.1",', 1)
    )
    git(repo, "commit", "-q", "-am", "data depends on obs")
    base = git(repo, "rev-parse", "HEAD")
    (repo / "packages/obs/src/module.py").write_text("x = 2\n")
    git(repo, "commit", "-q", "-am", "obs")
    result = matrix(repo, base)
    # mlp-data now depends on mlp-obs, so it comes after it.
    assert json.loads(result.stdout)["package"] == ["obs", "data", "serve", "train"]


def test_only_what_the_branch_changed_counts(repo):
    # main moves on after the branch forked: its changes are not the branch's (base...head).
    (repo / "packages/train/src/module.py").write_text("x = 3\n")
    git(repo, "commit", "-q", "-am", "train on the branch")
    git(repo, "checkout", "-q", "main")
    (repo / "packages/core/src/module.py").write_text("x = 4\n")
    git(repo, "commit", "-q", "-am", "core on main")
    git(repo, "checkout", "-q", "change")
    assert json.loads(matrix(repo).stdout)["package"] == ["train"]


@pytest.mark.parametrize("base", ["", "0" * 40])
def test_no_base_selects_everything(repo, base):
    result = matrix(repo, base)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"package": ALL}


def test_an_unknown_base_is_a_clear_error(repo):
    result = matrix(repo, "no-such-branch")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "'no-such-branch' is not a commit" in result.stderr


def test_a_folder_without_packages_is_a_clear_error(tmp_path):
    git(tmp_path, "init", "-q")
    result = matrix(tmp_path, "")
    assert result.returncode == 2
    assert "no packages/*/pyproject.toml" in result.stderr
