"""`mlp train` and `mlp evaluate`. This module stays light: torch loads only when a command runs."""

from __future__ import annotations

import argparse
import json
import os

from mlp_core.cli import Command

EXIT_INTERRUPTED = 130


def _configure_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config",
        nargs="?",
        help="a YAML file with the sections data, model, training, or a folder holding "
        "data_config.yaml, model_config.yaml and training_config.yaml",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set training.epochs=3 (repeatable)",
    )
    parser.add_argument(
        "--run-dir", help="the folder that holds run folders (default: training.run_dir, runs/)"
    )
    parser.add_argument(
        "--resume", metavar="RUN_FOLDER", help="continue a run from its last good checkpoint"
    )


def _train(args: argparse.Namespace) -> int:
    from mlp_train.run import train
    from mlp_train.trainer import TrainingInterrupted

    try:
        result = train(args.config, args.overrides, runs_root=args.run_dir, resume=args.resume)
    except TrainingInterrupted as stop:
        print(f"mlp train: {stop.message}\n  resume with: mlp train --resume <run folder>")
        return EXIT_INTERRUPTED
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun only rank 0 reports (the others hold no final metrics)
    shown = {k: round(v, 4) for k, v in result.metrics.items()}
    print(json.dumps(shown))
    print(result.run_dir)  # the last line: scripts read the run folder from it
    return 0


def _configure_evaluate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_FOLDER", help="a folder `mlp train` wrote")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])


def _evaluate(args: argparse.Namespace) -> int:
    from mlp_train.run import evaluate

    values = evaluate(args.run_dir, args.split)
    print(json.dumps({k: round(v, 4) for k, v in values.items()}))
    return 0


train_command = Command(
    help="train a model from a YAML config", configure=_configure_train, run=_train
)
evaluate_command = Command(
    help="recompute a run's metrics and plots on a split",
    configure=_configure_evaluate,
    run=_evaluate,
)
