"""`mlp export`: a training run folder -> a model bundle in a model repository.

This module stays light (``mlp --help`` imports it): torch, onnx and the exporter load only
when the command runs, and a missing ``export`` extra is a clear error naming it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json

from mlp_core.cli import Command
from mlp_core.errors import MissingDependencyError

INSTALL = "mlp-serve[export]"
_NEEDED = ("torch", "onnx", "mlp_models")


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_FOLDER", help="a folder `mlp train` wrote")
    parser.add_argument(
        "--repo", required=True, help="the model repository: bundles go to REPO/<name>/<version>/"
    )
    parser.add_argument(
        "--name", help="the model's name in the repository (default: the run's data name)"
    )
    parser.add_argument(
        "--version",
        type=int,
        help="the bundle version, a positive integer (default: the next free one); "
        "an existing version is never overwritten",
    )
    parser.add_argument(
        "--quantize",
        choices=["int8"],
        help="int8 dynamic quantisation of the network's weights; the accuracy change is "
        "measured and recorded in the manifest",
    )
    parser.add_argument("--fp16", action="store_true", help="a float16 network, for GPU serving")
    parser.add_argument(
        "--format",
        choices=["onnx", "torchscript"],
        default="onnx",
        help="torchscript: also write model.torchscript beside model.onnx (detection runs)",
    )
    parser.add_argument(
        "--no-mlflow",
        action="store_true",
        help="do not log the ONNX model to the run's MLflow record",
    )


def _run(args: argparse.Namespace) -> int:
    for module in _NEEDED:
        if importlib.util.find_spec(module) is None:
            raise MissingDependencyError("mlp export", INSTALL)
    from mlp_obs.log import configure_logging

    # Before MLflow is imported: its lines then go through mlp's handlers, not its own.
    configure_logging("DEBUG" if getattr(args, "debug", False) else None)
    from mlp_serve.export import export_run

    result = export_run(
        args.run_dir,
        args.repo,
        name=args.name,
        version=args.version,
        quantize=args.quantize,
        fp16=args.fp16,
        log_to_mlflow=not args.no_mlflow,
        export_format=args.format,
    )
    manifest = result.manifest
    summary = {
        "name": manifest.name,
        "version": manifest.version,
        "kind": manifest.kind,
        "task": manifest.task,
        "precision": manifest.precision,
        "parity": manifest.parity.model_dump() if manifest.parity else None,
        "sha256": manifest.sha256,
        "mlflow": result.mlflow or {"logged": False, "reason": "--no-mlflow"},
    }
    if manifest.kind == "detection":  # the gate's boxes: at the defaults, then at 0.001
        check = manifest.training.get("export_check") or {}
        summary["detections"] = {
            key: check.get(key) for key in ("reference_detections", "paired", "min_iou")
        }
        summary["detections"]["low_confidence_paired"] = (check.get("low_confidence") or {}).get(
            "paired"
        )
    if manifest.quantization:
        summary["vs_fp32"] = {
            k: manifest.quantization[k]
            for k in ("max_abs_diff_vs_fp32", "argmax_agreement", "accuracy")
            if k in manifest.quantization
        }
    print(json.dumps(summary))
    print(result.path)  # the last line: scripts read the bundle folder from it
    return 0


export_command = Command(
    help="export a training run as an ONNX model bundle (with its preprocessing) for serving",
    configure=_configure,
    run=_run,
)
