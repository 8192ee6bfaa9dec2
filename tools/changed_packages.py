#!/usr/bin/env python3
"""Which packages' tests a change needs: the packages it touched and every package that depends
on them, as the JSON matrix of CI's per-package test job.

    python3 tools/changed_packages.py --base origin/main      # {"package": ["obs", "serve", "train"]}
    python3 tools/changed_packages.py --base "$BEFORE_SHA" --head HEAD

The edges come from packages/*/pyproject.toml (dependencies and every extra's, so mlp-serve
depends on mlp-models through its `export` extra); nothing here names a package. A change to what
every suite runs with (the root pyproject.toml, uv.lock, tools/ci/, tools/lib.sh, this script,
the CI workflow, examples/) selects every package, and so does a base of all zeros or an empty
one (a new branch's first push, a manual run). The names are the package folders, which is what
tools/ci/test_packages.sh takes. Standard library only (Python 3.11+, for tomllib): CI runs it
before any environment exists.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import tomllib

# Paths every package's tests depend on: a change here selects them all.
EVERYTHING = (
    "pyproject.toml",
    "uv.lock",
    ".python-version",
    "tools/ci/",
    "tools/lib.sh",
    "tools/changed_packages.py",
    ".github/workflows/ci.yml",
    "examples/",  # the package suites train on the bundled data
)
NO_BASE = re.compile(r"^0*$")  # GitHub's `before` on a new branch is forty zeros
# A requirement's distribution name: everything before extras, a version, a marker or a URL.
REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


class UsageError(Exception):
    """Bad input: reported in one line, exit status 2."""


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_packages(root: Path) -> tuple[dict[str, str], dict[str, set[str]]]:
    """The workspace's packages (distribution name -> folder) and each one's mlp dependencies."""
    folders: dict[str, str] = {}
    requirements: dict[str, list[str]] = {}
    for pyproject in sorted(root.glob("packages/*/pyproject.toml")):
        project = tomllib.loads(pyproject.read_text()).get("project", {})
        if "name" not in project:
            raise UsageError(f"{pyproject.relative_to(root)}: no [project] name")
        name = normalise(project["name"])
        folders[name] = pyproject.parent.name
        requirements[name] = list(project.get("dependencies", []))
        for extra in project.get("optional-dependencies", {}).values():
            requirements[name].extend(extra)
    if not folders:
        raise UsageError(f"{root}: no packages/*/pyproject.toml")
    depends_on = {
        name: {dep for dep in map(requirement_name, reqs) if dep in folders and dep != name}
        for name, reqs in requirements.items()
    }
    return folders, depends_on


def requirement_name(requirement: str) -> str:
    found = REQUIREMENT_NAME.match(requirement)
    return normalise(found.group(1)) if found else ""


def dependents(depends_on: dict[str, set[str]], changed: Iterable[str]) -> set[str]:
    """``changed`` and every package that depends on one of them, directly or not."""
    selected = set(changed)
    grew = True
    while grew:
        grew = False
        for name, deps in depends_on.items():
            if name not in selected and deps & selected:
                selected.add(name)
                grew = True
    return selected


def in_dependency_order(depends_on: dict[str, set[str]], names: set[str]) -> list[str]:
    """Dependencies before their dependents (ties by name): mlp-core's suite comes first."""
    ordered: list[str] = []
    while len(ordered) < len(depends_on):
        ready = sorted(
            n for n, deps in depends_on.items() if n not in ordered and deps <= set(ordered)
        )
        if not ready:
            raise UsageError(f"the packages depend on each other in a cycle: {depends_on}")
        ordered.extend(ready)
    return [n for n in ordered if n in names]


def changed_files(root: Path, base: str, head: str) -> list[str]:
    """What ``head`` changed since it forked from ``base`` (``git diff base...head``)."""
    for ref in (base, head):
        probe = git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
        if probe.returncode != 0:
            raise UsageError(f"{ref!r} is not a commit in {root} (is the history fetched?)")
    diff = git(root, "diff", "--name-only", "--no-renames", f"{base}...{head}")
    if diff.returncode != 0:
        raise UsageError(f"git diff {base}...{head} failed: {diff.stderr.strip()}")
    return [line for line in diff.stdout.splitlines() if line]


def git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)


def select(root: Path, base: str, head: str = "HEAD") -> list[str]:
    """The folders of the packages whose tests the change from ``base`` to ``head`` needs."""
    folders, depends_on = read_packages(root)
    if NO_BASE.match(base):
        selected = set(folders)
    else:
        files = changed_files(root, base, head)
        if any(f == p or (p.endswith("/") and f.startswith(p)) for f in files for p in EVERYTHING):
            selected = set(folders)
        else:
            by_folder = {folder: name for name, folder in folders.items()}
            touched = {by_folder.get(f.split("/")[1]) for f in files if f.startswith("packages/")}
            selected = dependents(depends_on, touched - {None})
    return [folders[name] for name in in_dependency_order(depends_on, selected)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--base",
        required=True,
        help="the commit the change starts from (a branch, a sha; empty or zeros: everything)",
    )
    parser.add_argument("--head", default="HEAD", help="the changed commit (default HEAD)")
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(__file__).resolve().parents[1],
        help="the repository (default: the one holding this script)",
    )
    args = parser.parse_args(argv)
    try:
        root = args.root.resolve()
        packages = select(root, args.base.strip(), args.head)
    except UsageError as exc:
        print(f"changed_packages: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"package": packages}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
