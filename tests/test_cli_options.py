"""Every documented option of every `mlp` subcommand reaches that subcommand (issue 12).

`mlp export RUN --repo REPO --version 7` once printed the installed package versions and
exited 0: the root's --version and export's shared a namespace attribute. Here each installed
subcommand's options are read from its own `--help`, then given through the real `mlp` script
in a way that fails fast after parsing (a folder that does not exist, a closed port), and the
failure must be the subcommand's, not argparse's and not the root's. A second check parses the
same command lines with the parser `mlp` builds and shows each option's value in the namespace.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

MLP = Path(sys.executable).parent / "mlp"
COMMANDS = ("train", "evaluate", "export", "serve", "predict", "doctor")
# These import torch (or run every check) before they can fail: one run with all their options.
SLOW = {"train", "evaluate", "export", "doctor"}
OPTION_LINE = re.compile(r"^  (?:-\w, )?(--[a-z][\w-]*)(?: (\S+))?")
GROUP = re.compile(r"[\[(]([^\[\]()]*\|[^\[\]()]*)[\])]")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def setting(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("cli-options")
    (tmp / "rows.csv").write_text("bill_length_mm\n39.1\n")
    (tmp / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    port = closed_port()
    return {
        "bases": {
            "train": [str(tmp / "missing" / "config.yaml")],
            "evaluate": [str(tmp / "missing-run")],
            "export": [str(tmp / "missing-run"), "--repo", str(tmp / "repo")],
            "serve": [str(tmp / "missing-repo"), "--http-port", "0", "--grpc-port", "0"],
            "predict": ["penguins", "--json", '[{"a": 1}]', "--grpc", f"127.0.0.1:{port}"],
            "doctor": [],
        },
        # A value each option's own type accepts; any other option gets "1".
        "values": {
            "--version": "7",
            "--set": "a.b=1",
            "--csv": str(tmp / "rows.csv"),
            "--json": '[{"bill_length_mm": 39.1}]',
            "--image": str(tmp / "image.png"),
            "--url": f"http://127.0.0.1:{port}",
            "--grpc": f"localhost:{port}",
            "--timeout": "5",
            "--format": "torchscript",  # onnx is the default
        },
    }


# MLP_DEBUG would set --debug everywhere, and hide whether the option itself did.
ENV = {k: v for k, v in os.environ.items() if k != "MLP_DEBUG"}


def mlp(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(MLP), *argv],
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
        env=ENV,
    )


def documented(command: str) -> tuple[dict[str, str | None], list[list[str]]]:
    """The options in `mlp COMMAND --help` (option -> metavar) and its exclusive groups."""
    proc = mlp(command, "--help")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    options: dict[str, str | None] = {}
    section = text.split("\noptions:\n", 1)[1]
    for line in section.splitlines():
        match = OPTION_LINE.match(line)
        if match and match.group(1) != "--help":
            options[match.group(1)] = match.group(2)
    usage = " ".join(text.split("\n\n", 1)[0].split())
    groups = [[member.split()[0] for member in group.split("|")] for group in GROUP.findall(usage)]
    return options, groups


def value(option: str, metavar: str | None, values: dict) -> list[str]:
    if metavar is None:
        return [option]
    if metavar.startswith("{"):  # a choice named in values (not the default), else the first
        return [option, values.get(option, metavar[1:-1].split(",")[0])]
    return [option, values.get(option, "1")]


def with_option(base: list[str], groups: list[list[str]], given: list[str]) -> list[str]:
    """``base`` plus ``given``, less the base's member of ``given``'s exclusive group."""
    rivals = {m for g in groups if given[0] in g for m in g if m != given[0]}
    argv: list[str] = []
    skip = False
    for arg in base:
        if skip:
            skip = False
            continue
        if arg in rivals:
            skip = True  # every grouped option here takes a value
            continue
        argv.append(arg)
    return argv + given


def command_lines(command: str, setting: dict) -> list[list[str]]:
    """One command line per option, or for a slow command as few as its groups allow."""
    options, groups = documented(command)
    assert options, f"mlp {command} --help documents no options"
    base = setting["bases"][command]
    lines = [
        [command, *with_option(base, groups, value(opt, meta, setting["values"]))]
        for opt, meta in options.items()
    ]
    if command not in SLOW:
        return lines
    grouped = {m for g in groups for m in g}
    combined = [command, *base]
    for opt, meta in options.items():
        if opt not in grouped:
            combined += value(opt, meta, setting["values"])
    runs = [combined]
    for group in groups:
        runs += [
            [command, *with_option(base, groups, value(m, options[m], setting["values"]))]
            for m in group
            if m in options
        ]
    return runs


def reached(command: str, proc: subprocess.CompletedProcess) -> bool:
    """The subcommand's run ended it with its own typed error line (after the traceback that
    --debug adds): not argparse's usage error, and not an unhandled exception."""
    return f"mlp {command}: error:" in proc.stderr and "usage:" not in proc.stderr


def test_every_subcommand_is_installed():
    proc = mlp("--help")
    for command in COMMANDS:
        assert re.search(rf"^    {command}\s", proc.stdout, re.M), proc.stdout


def test_every_documented_option_reaches_its_subcommand(setting):
    lines = [line for command in COMMANDS for line in command_lines(command, setting)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda argv: mlp(*argv), lines))
    failures = []
    for argv, proc in zip(lines, results, strict=True):
        command = argv[0]
        if proc.stdout.startswith("mlp-core "):
            failures.append(f"{argv}: the root's --version ran")
        elif command == "doctor":
            # Nothing makes doctor fail; it must print its report, as JSON when asked.
            if proc.returncode != 0 or "onnxruntime" not in proc.stdout:
                failures.append(f"{argv}: rc {proc.returncode}\n{proc.stderr[-800:]}")
            elif "--json" in argv:
                assert "onnxruntime" in json.loads(proc.stdout)["checks"]
        elif proc.returncode != 1 or not reached(command, proc):
            failures.append(f"{argv}: rc {proc.returncode}\n{proc.stderr[-800:]}")
    assert not failures, "\n\n".join(failures)
    assert len(lines) >= 20  # every command's options, not a handful


PARSE = """
import json, sys
from mlp_core.cli import build_parser
print(json.dumps([vars(build_parser().parse_args(argv)) for argv in json.loads(sys.argv[1])],
                 default=str))
"""


def test_every_documented_option_lands_in_the_subcommands_namespace(setting):
    cases = []  # (argv with the option, the base argv, the option's value or None)
    for command in COMMANDS:
        options, groups = documented(command)
        base = setting["bases"][command]
        for opt, meta in options.items():
            given = value(opt, meta, setting["values"])
            argv = [command, *with_option(base, groups, given)]
            cases.append((argv, [command, *base], given[1] if len(given) == 2 else None))
    argvs = [argv for case in cases for argv in case[:2]]
    proc = subprocess.run(
        [sys.executable, "-c", PARSE, json.dumps(argvs)], capture_output=True, text=True, env=ENV
    )
    assert proc.returncode == 0, proc.stderr
    spaces = json.loads(proc.stdout)
    for index, (argv, _, given) in enumerate(cases):
        with_it, without_it = spaces[2 * index], spaces[2 * index + 1]
        changed = {k: v for k, v in with_it.items() if without_it.get(k) != v}
        assert changed, f"{argv}: the option changed nothing in the namespace"
        assert with_it["command"] == argv[0]
        assert with_it["mlp_root_version"] is False, f"{argv}: set the root's --version"
        if given is not None:
            assert any(given in json.dumps(v) or str(v) == given for v in changed.values()), (
                f"{argv}: {given!r} not in {changed}"
            )


def test_export_version_is_the_bundle_version_not_the_package_list(tmp_path):
    # The command line, with a run folder that does not exist.
    proc = mlp(
        "export", str(tmp_path / "run"), "--repo", str(tmp_path / "repo"), "--name", "penguins",
        "--version", "7",
    )  # fmt: skip
    assert proc.returncode == 1
    assert "mlp-core" not in proc.stdout
    assert f"mlp export: error: {tmp_path / 'run'}: no such run folder" in proc.stderr


def test_root_version_still_lists_the_packages():
    for argv in (["--version"], ["--vers"]):
        proc = mlp(*argv)
        assert proc.returncode == 0
        assert proc.stdout.startswith("mlp-core ")
