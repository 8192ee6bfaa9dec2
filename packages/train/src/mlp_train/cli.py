"""`mlp train` and `mlp evaluate`. This module stays light: torch loads only when a command runs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING

from mlp_core.cli import Command

if TYPE_CHECKING:
    from mlp_train.run import RunResult

EXIT_INTERRUPTED = 130
EXIT_USAGE = 2


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

    if getattr(args, "debug", False):
        # `mlp --debug train`: every library's lines too (mlp_obs.log shows them as DEBUG).
        os.environ.setdefault("MLP_LOG_LEVEL", "DEBUG")
    from mlp_core.errors import MissingDependencyError
    from mlp_train.detection import INSTALL as DETECTION_INSTALL

    try:
        result = train(args.config, args.overrides, runs_root=args.run_dir, resume=args.resume)
    except MissingDependencyError as missing:
        if missing.install != DETECTION_INSTALL:
            raise
        # A usage problem, not a failed run: detection needs the yolo extra (ultralytics).
        print(f"mlp train: error: {missing}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingInterrupted as stop:
        print(f"mlp train: {stop.message}\n  resume with: mlp train --resume <run folder>")
        return EXIT_INTERRUPTED
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun only rank 0 reports (the others hold no final metrics)
    for line in summary_lines(result):
        print(line)
    print(result.run_dir)  # the last line: scripts read the run folder from it
    return 0


def summary_lines(result: RunResult) -> list[str]:
    """What a person acts on after training: the best epoch, the test metrics, the plots, the
    MLflow run. Every metric is in the run folder's metrics.json."""
    from mlp_train.run import HEADLINE

    lines = []
    if result.best is not None:
        best = result.best
        by = (
            f" by {best.monitor} {best.value:.4f}"
            if best.monitor and best.value is not None
            else ""
        )
        lines.append(f"best epoch: {best.epoch} of {result.epochs}{by} (the saved model's weights)")
    for split in ("test", "val"):
        shown = [
            f"{name} {result.metrics[f'{split}.{name}']:.4f}"
            for name in HEADLINE
            if f"{split}.{name}" in result.metrics
        ]
        if shown:
            lines.append(f"{split}: {', '.join(shown)}")
    if result.plots:
        folder = result.plots[0].parent
        lines.append(f"plots: {folder}/ ({', '.join(p.name for p in result.plots)})")
    lines.append(f"metrics: {result.run_dir / 'metrics.json'}")
    tracking = result.tracking
    if tracking:
        lines.append(
            f"MLflow run {tracking['run_id']}: mlflow ui --backend-store-uri "
            f"{tracking['tracking_uri']}"
        )
    return lines


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
