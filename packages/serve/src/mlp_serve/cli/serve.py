"""``mlp serve REPO``: serve a model repository over REST and gRPC.

This module is what ``mlp --help`` imports, so it stays light: onnxruntime, FastAPI and gRPC
are imported only when the command runs.
"""

from __future__ import annotations

import argparse

from mlp_core.cli import Command


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("repository", help="model repository: REPO/<model>/<version>/model.onnx")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--http-port", type=int, help="REST port (default 8000; 0 picks one)")
    parser.add_argument("--grpc-port", type=int, help="gRPC port (default 8001; 0 picks one)")
    parser.add_argument("--config", help="YAML file with a serve: section, or a bare one")
    parser.add_argument(
        "--workers",
        metavar="N",
        help="server processes behind the same ports, each with its own copy of the models "
        "(Linux; default 1: this process serves; 0 or 'auto': one per usable CPU)",
    )
    parser.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="NAME",
        help="serve only this model (repeatable; default: every model in the repository)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override a serve setting, e.g. --set batching.max_batch_size=32",
    )
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=30.0,
        help="on SIGTERM, how long requests in flight may take to finish (default 30)",
    )
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (default INFO)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlp serve", description=serve_command.help)
    configure(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mlp_core.errors import ServingError
    from mlp_obs.log import configure_logging
    from mlp_serve.config import load_serve_config

    configure_logging(args.log_level)
    overrides = list(args.overrides)
    for key in ("host", "http_port", "grpc_port", "workers"):
        value = getattr(args, key)
        if value is not None:
            overrides.append(f"{key}={value}")
    config = load_serve_config(args.config, overrides)
    if args.models:
        config.models = list(args.models)
    from mlp_serve.auth import authenticator_for

    # Read the tokens now: a missing or malformed tokens file stops us before any model loads.
    authenticator_for(config)
    repository = Path(args.repository)
    if not repository.is_dir():
        raise ServingError(
            f"model repository {repository} is not a folder",
            hint="Pass a folder laid out as REPO/<model>/<version>/model.onnx (mlp export writes one).",
        )
    from mlp_serve.workers import resolve_workers, serve_workers

    workers = resolve_workers(config.workers)
    if workers > 1:
        return serve_workers(
            repository,
            config,
            workers,
            drain_seconds=args.drain_seconds,
            log_level=args.log_level,
        )
    from mlp_serve.server import serve

    return serve(repository, config, drain_seconds=args.drain_seconds)


serve_command = Command(
    help="serve ONNX models over REST and gRPC (Open Inference Protocol)",
    configure=configure,
    run=run,
)
