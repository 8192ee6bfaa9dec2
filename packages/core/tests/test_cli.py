import argparse
import json
import subprocess
import sys

import pytest

from mlp_core import cli
from mlp_core.cli import Command, main
from mlp_core.errors import DataError
from mlp_core.versions import mlp_packages


def test_version_lists_installed_mlp_packages(capsys):
    assert main(["--version"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"mlp-core {mlp_packages()['mlp-core']}" in lines
    assert all(line.startswith("mlp-") for line in lines)


def test_missing_package_command_says_what_to_install(capsys, monkeypatch):
    monkeypatch.setitem(cli.KNOWN_COMMANDS, "frobnicate", "mlp-frob")
    assert main(["frobnicate", "--x"]) == 2
    err = capsys.readouterr().err
    assert "`mlp frobnicate` is provided by mlp-frob, which is not installed" in err
    assert "pip install 'mlp-frob'" in err


def test_installed_package_without_the_command_says_upgrade(capsys, monkeypatch):
    monkeypatch.setitem(cli.KNOWN_COMMANDS, "frobnicate", "mlp-core")
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert (
        f"mlp-core {mlp_packages()['mlp-core']} is installed but has no `mlp frobnicate` command"
        in err
    )
    assert "pip install --upgrade 'mlp-core'" in err


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["no-such-command"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def _register(monkeypatch, name, run):
    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--value", type=int, default=1)

    monkeypatch.setitem(cli.commands._items, name, Command("test command", configure, run))


def test_command_runs_with_its_arguments(monkeypatch, capsys):
    _register(monkeypatch, "echo", lambda args: print(json.dumps({"value": args.value})) or 0)
    assert main(["echo", "--value", "7"]) == 0
    assert json.loads(capsys.readouterr().out) == {"value": 7}


def test_mlp_error_prints_message_and_hint_not_traceback(monkeypatch, capsys):
    def fail(args):
        raise DataError("penguins.csv row 3: 'body_mass_g' expected a number, got 'heavy'")

    _register(monkeypatch, "fail", fail)
    assert main(["fail"]) == 1
    err = capsys.readouterr().err
    assert "mlp fail: error: penguins.csv row 3" in err
    assert "hint: Check the file, row or column" in err
    assert "Traceback" not in err
    assert main(["--debug", "fail"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_broken_plugin_does_not_break_help(monkeypatch, capsys):
    from mlp_core.errors import RegistryError

    real_get = cli.commands.get

    def get(name):
        if name == "broken":
            raise RegistryError("command 'broken' (from x) cannot be loaded: boom")
        return real_get(name)

    monkeypatch.setattr(cli.commands, "names", lambda: ["broken"])
    monkeypatch.setattr(cli.commands, "get", get)
    parser = cli.build_parser()
    assert "cannot be loaded" in parser.format_help()


def test_help_imports_no_heavy_library():
    code = (
        "import sys, contextlib, io\n"
        "from mlp_core.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    for argv in (['--help'], ['--version']):\n"
        "        try: main(argv)\n"
        "        except SystemExit: pass\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'torch', 'pandas', 'onnxruntime', 'mlflow', 'torchvision'})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_a_subcommands_version_option_is_its_own(monkeypatch, capsys):
    # `mlp export RUN --version 7` once printed the package versions: the root's --version
    # and the subcommand's shared a namespace attribute.
    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--version", default=None)

    def run(args):
        print(json.dumps({"version": args.version}))

    monkeypatch.setitem(cli.commands._items, "bundle", Command("test command", configure, run))
    assert main(["bundle", "--version", "7"]) == 0
    assert json.loads(capsys.readouterr().out) == {"version": "7"}
    assert main(["bundle", "--vers", "8"]) == 0  # argparse's prefix match, inside the subcommand
    assert json.loads(capsys.readouterr().out) == {"version": "8"}
    assert main(["bundle"]) == 0
    assert json.loads(capsys.readouterr().out) == {"version": None}
    # Before the subcommand name, --version is still the root's.
    assert main(["--version", "bundle"]) == 0
    assert f"mlp-core {mlp_packages()['mlp-core']}" in capsys.readouterr().out.splitlines()


def test_debug_is_accepted_after_the_subcommand(monkeypatch, capsys):
    def fail(args):
        raise DataError("bad row")

    _register(monkeypatch, "fail", fail)
    monkeypatch.delenv("MLP_DEBUG", raising=False)
    assert main(["fail", "--value", "2", "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err
    assert main(["fail", "--value", "2"]) == 1
    assert "Traceback" not in capsys.readouterr().err
    monkeypatch.setenv("MLP_DEBUG", "1")
    assert main(["fail"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_a_subcommands_own_debug_option_wins(monkeypatch, capsys):
    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--debug", choices=["on", "off"], default="off")

    def run(args):
        print(json.dumps({"debug": args.debug}))

    monkeypatch.setitem(cli.commands._items, "own", Command("test command", configure, run))
    monkeypatch.delenv("MLP_DEBUG", raising=False)
    assert main(["own", "--debug", "on"]) == 0
    assert json.loads(capsys.readouterr().out) == {"debug": "on"}
