"""The GitHub Actions workflows: valid against the workflow schema (check-jsonschema's vendored
copy, offline), and holding the properties CI and releases rely on. No runner exists here: what a
run does is only checked in its text."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
BIN = Path(sys.executable).parent


def load(name: str) -> dict:
    # PyYAML reads the `on:` key as the boolean True (YAML 1.1), as GitHub does not.
    document = yaml.safe_load((WORKFLOWS / name).read_text())
    document["on"] = document.pop(True)
    return document


def steps_text(job: dict) -> str:
    """Every `run:` and `uses:` of a job, one per line."""
    return "\n".join(str(step.get("run", step.get("uses", ""))) for step in job["steps"])


def uses(job: dict, action: str) -> list[dict]:
    return [s for s in job["steps"] if str(s.get("uses", "")).startswith(action + "@")]


@pytest.mark.parametrize("name", ["ci.yml", "release.yml"])
def test_the_workflow_is_valid_against_the_github_workflows_schema(name):
    result = subprocess.run(
        [BIN / "check-jsonschema", "--builtin-schema", "vendor.github-workflows", WORKFLOWS / name],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_tests_the_changed_packages_and_their_dependents():
    ci = load("ci.yml")
    changes = ci["jobs"]["changes"]
    assert "tools/changed_packages.py --base" in steps_text(changes)
    assert changes["outputs"]["matrix"] == "${{ steps.select.outputs.matrix }}"
    # The merge base needs the history, not a shallow clone.
    assert uses(changes, "actions/checkout")[0]["with"]["fetch-depth"] == 0

    tests = ci["jobs"]["package-tests"]
    assert tests["needs"] == "changes"
    assert tests["strategy"]["matrix"] == "${{ fromJSON(needs.changes.outputs.matrix) }}"
    assert 'tools/ci/test_packages.sh "${{ matrix.package }}"' in steps_text(tests)
    assert "package[0] != null" in tests["if"]  # an empty matrix would fail the run


def test_ci_runs_every_check_of_tools_test_sh():
    ci = load("ci.yml")
    everything = "\n".join(steps_text(job) for job in ci["jobs"].values())
    for check in (
        "ruff check .",
        "ruff format --check .",
        "pyright",
        "lint-imports",
        "tools/ci/check_deps.sh",
        "tools/ci/make_protobuf7_env.sh",
        "pytest tests --ignore=tests/deploy",
        "pytest tests/deploy",  # the deploy linters (tests/deploy/test_lint.py, ...)
        "tools/ci/wheel_check.sh",
        "ensure_debian_packages prometheus",
    ):
        assert check in everything, check


def test_ci_uses_uv_with_its_cache_cancels_stale_runs_and_reads_only():
    ci = load("ci.yml")
    assert ci["concurrency"]["cancel-in-progress"] is True
    assert ci["permissions"] == {"contents": "read"}
    for name, job in ci["jobs"].items():
        assert "permissions" not in job, name  # nothing beyond the read-only default
        for setup in uses(job, "astral-sh/setup-uv"):
            assert setup["with"]["enable-cache"] is True, name
    assert {"pull_request", "push"} <= set(ci["on"])


def test_release_builds_without_secrets_and_publishes_by_trusted_publishing_only():
    release = load("release.yml")
    jobs = release["jobs"]
    assert release["on"] == {"push": {"tags": ["mlp-*-v*"]}}
    assert release["permissions"] == {}

    # The OIDC token only where a package is published, and no stored token anywhere.
    publishers = {n for n, j in jobs.items() if j.get("permissions", {}).get("id-token")}
    assert publishers == {"publish-testpypi", "publish-pypi"}
    for name in publishers:
        assert jobs[name]["permissions"] == {"id-token": "write"}, name
        (publish,) = uses(jobs[name], "pypa/gh-action-pypi-publish")
        assert "password" not in publish.get("with", {}), name
    assert jobs["publish-testpypi"]["environment"]["name"] == "testpypi"
    assert (
        uses(jobs["publish-testpypi"], "pypa/gh-action-pypi-publish")[0]["with"]["repository-url"]
        == "https://test.pypi.org/legacy/"
    )
    assert "publish-testpypi" in jobs["publish-pypi"]["needs"]  # TestPyPI first
    assert jobs["publish-pypi"]["environment"]["name"] == "pypi"
    assert "smoke" in jobs["publish-testpypi"]["needs"]

    build = jobs["build"]
    assert build["permissions"] == {"contents": "read"}
    assert "secrets." not in yaml.safe_dump(build)
    assert 'uv build --package "${{ steps.tag.outputs.package }}"' in steps_text(build)
    # The only secret of the whole workflow is the job token that pushes the images.
    assert re.findall(r"secrets\.\w+", (WORKFLOWS / "release.yml").read_text()) == [
        "secrets.GITHUB_TOKEN"
    ]


def test_release_smoke_tests_the_wheel_and_the_images_before_pushing():
    jobs = load("release.yml")["jobs"]
    smoke = steps_text(jobs["smoke"])
    assert "uv venv" in smoke and "uv pip install" in smoke and "dist/*.whl" in smoke
    assert 'mlp" --version' in smoke

    images = jobs["images"]
    assert images["permissions"] == {"contents": "read", "packages": "write"}
    builds = uses(images, "docker/build-push-action")
    assert [b["with"].get("load", False) for b in builds] == [True, False]
    assert [b["with"].get("push", False) for b in builds] == [False, True]
    steps = [s.get("uses", s.get("run", "")) for s in images["steps"]]
    smoke_step = next(i for i, s in enumerate(steps) if "docker run" in s)
    assert steps.index(builds[0]["uses"]) < smoke_step < len(steps) - 1  # built, run, pushed
    assert "healthy" in steps[smoke_step]
    assert uses(images, "docker/login-action")[0]["with"]["registry"] == "ghcr.io"


def run_tag_step(tag: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], dict]:
    """The build job's tag step, run here as GitHub runs it (bash -eo pipefail), on ``tag``."""
    (step,) = [s for s in load("release.yml")["jobs"]["build"]["steps"] if s.get("id") == "tag"]
    output = tmp_path / "github_output"
    output.write_text("")
    result = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
        env={**os.environ, "TAG": tag, "GITHUB_OUTPUT": str(output)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = output.read_text().splitlines()
    return result, dict(line.split("=", 1) for line in lines)


def declared_version(package: str) -> str:
    return subprocess.run(
        ["uv", "version", "--package", package, "--short"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_the_tag_names_the_package_its_version_and_its_images(tmp_path):
    version = declared_version("mlp-serve")
    result, outputs = run_tag_step(f"mlp-serve-v{version}", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert outputs["package"] == "mlp-serve" and outputs["version"] == version
    images = json.loads(outputs["images"])
    assert [i["image"] for i in images] == ["mlp-serve", "mlp-serve-cuda"]
    assert all((ROOT / i["dockerfile"]).is_file() for i in images), images

    result, outputs = run_tag_step(f"mlp-core-v{declared_version('mlp-core')}", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(outputs["images"]) == []  # a library: no image


@pytest.mark.parametrize(
    ("tag", "error"),
    [
        ("mlp-serve-v99.0.0", "releases 99.0.0 but packages/serve/pyproject.toml says"),
        ("mlp-nothing-v1.0.0", "names no package (packages/nothing)"),
    ],
)
def test_a_tag_that_does_not_match_a_package_fails_the_release(tmp_path, tag, error):
    result, outputs = run_tag_step(tag, tmp_path)
    assert result.returncode == 1
    assert error in result.stdout, result.stdout + result.stderr
    assert outputs == {}
