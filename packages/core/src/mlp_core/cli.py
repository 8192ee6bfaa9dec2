"""The ``mlp`` command.

Subcommands come from the entry-point group ``mlp.commands`` of whatever mlp packages are
installed. Each entry point names a :class:`Command` in a light module: ``mlp --help`` loads
those modules only, and a command imports its heavy dependencies (torch, pandas, onnxruntime)
inside ``run``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mlp_core.errors import MlpError, RegistryError
from mlp_core.registry import Registry
from mlp_core.versions import mlp_packages

COMMANDS_GROUP = "mlp.commands"

# Where each command of the platform lives, so a missing one can say what to install.
KNOWN_COMMANDS = {
    "doctor": "mlp-obs",
    "train": "mlp-train",
    "evaluate": "mlp-train",
    "export": "mlp-serve[export]",
    "serve": "mlp-serve",
    "predict": "mlp-serve",
}

# Namespace attributes of the root parser; no subcommand's option may land on them.
ROOT_VERSION = "mlp_root_version"
ROOT_DEBUG = "mlp_root_debug"
ROOT_COMMAND = "command"
DEBUG_HELP = "show the full traceback of errors (also MLP_DEBUG=1)"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


@dataclass(frozen=True)
class Command:
    """A subcommand: its one-line help, how it adds its arguments, and what it runs."""

    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


commands: Registry[Command] = Registry("command", group=COMMANDS_GROUP)


def build_parser() -> argparse.ArgumentParser:
    missing = {name: pkg for name, pkg in KNOWN_COMMANDS.items() if name not in commands}
    epilog = None
    if missing:
        epilog = "not installed: " + ", ".join(
            f"{name} ({pkg})" for name, pkg in sorted(missing.items())
        )
    parser = argparse.ArgumentParser(
        prog="mlp",
        description="Train, evaluate, export and serve models.",
        epilog=epilog,
    )
    # The root's own options have dests no subcommand uses: argparse copies a subcommand's
    # namespace over the root's, so a shared dest (`mlp export --version 7` once set
    # `version="7"`) made a subcommand's option look like the root's and run it instead.
    parser.add_argument(
        "--version",
        dest=ROOT_VERSION,
        action="store_true",
        help="list the installed mlp packages and exit",
    )
    parser.add_argument(
        "--debug",
        dest=ROOT_DEBUG,
        action="store_true",
        default=bool(os.environ.get("MLP_DEBUG")),
        help=DEBUG_HELP,
    )
    sub = parser.add_subparsers(dest=ROOT_COMMAND, metavar="COMMAND")
    for name in commands.names():
        try:
            command = commands.get(name)
        except RegistryError as exc:
            # One broken plugin must not take the whole command line down with it.
            command = _broken(exc)
        sub_parser = sub.add_parser(name, help=command.help, description=command.help)
        command.configure(sub_parser)
        _add_debug(sub_parser)
    return parser


def _add_debug(sub_parser: argparse.ArgumentParser) -> None:
    """Accept `--debug` after the subcommand too, unless the subcommand has its own."""
    # A subcommand's own --debug wins: adding ours then conflicts, and is left out.
    with contextlib.suppress(argparse.ArgumentError):
        # SUPPRESS: when it is absent the root's value (from `mlp --debug` or MLP_DEBUG) stays.
        sub_parser.add_argument(
            "--debug",
            dest=ROOT_DEBUG,
            action="store_true",
            default=argparse.SUPPRESS,
            help=DEBUG_HELP,
        )


def _broken(error: RegistryError) -> Command:
    def fail(args: argparse.Namespace) -> int:
        raise error

    return Command(help=f"(cannot be loaded: {error.message})", configure=lambda p: None, run=fail)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    missing = _missing_command(args_list)
    if missing:
        name, package = missing
        distribution = package.split()[0].split("[")[0]
        installed = mlp_packages().get(distribution)
        if installed:
            message = f"{distribution} {installed} is installed but has no `mlp {name}` command"
            hint = f"pip install --upgrade '{package}'"
        else:
            message = f"`mlp {name}` is provided by {package}, which is not installed"
            hint = f"pip install '{package}'"
        print(f"mlp: {message}.\n  hint: {hint}", file=sys.stderr)
        return EXIT_USAGE

    parser = build_parser()
    args = parser.parse_args(args_list)
    if getattr(args, ROOT_VERSION):
        for package, version in mlp_packages().items():
            print(f"{package} {version}")
        return EXIT_OK
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    try:
        result = commands.get(args.command).run(args)
    except MlpError as exc:
        if getattr(args, ROOT_DEBUG):
            traceback.print_exc()
        else:
            print("(pass --debug for the traceback)", file=sys.stderr)
        print(f"mlp {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"mlp {args.command}: interrupted", file=sys.stderr)
        return 130
    return EXIT_OK if result is None else int(result)


def _missing_command(argv: list[str]) -> tuple[str, str] | None:
    first = next((arg for arg in argv if not arg.startswith("-")), None)
    if first is None or first in commands or first not in KNOWN_COMMANDS:
        return None
    return first, KNOWN_COMMANDS[first]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
