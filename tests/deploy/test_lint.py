"""The deploy linters over the whole repository: shellcheck on every shell script, yamllint (with
the root .yamllint) on every YAML file. Zero findings; tools/test.sh and CI run them through here.

The files are what git tracks plus what it would track (untracked, not ignored), so a new script
is linted before its first commit and nothing under .venv or runs/ ever is.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def repository_files(*suffixes: str) -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    # --cached still lists a file deleted in the work tree until the deletion is staged.
    return sorted(f for f in listed if f.endswith(suffixes) and (ROOT / f).is_file())


def lint(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)


def test_every_shell_script_passes_shellcheck():
    scripts = repository_files(".sh")
    # The discovery itself: the scripts of every place that has them.
    for expected in ("tools/test.sh", "tools/stack.sh", "packages/serve/gen_protos.sh"):
        assert expected in scripts, scripts
    assert any(s.startswith("deploy/") for s in scripts), scripts
    # .shellcheckrc: follow `source "$(dirname "$0")/lib.sh"` to the file it names.
    result = lint(str(BIN / "shellcheck"), "--format=gcc", *scripts)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "", result.stdout


def test_every_yaml_file_passes_yamllint():
    files = repository_files(".yml", ".yaml", ".yamllint")
    for expected in (".yamllint", ".github/workflows/ci.yml", "deploy/local/prometheus.yml"):
        assert expected in files, files
    assert any(f.startswith("examples/") for f in files), files
    result = lint(str(BIN / "yamllint"), "--strict", "-c", ".yamllint", "-f", "parsable", *files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "", result.stdout
