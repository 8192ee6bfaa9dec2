"""Model bundles: what `mlp export` writes and `mlp serve` loads.

A model repository is laid out as Triton and KServe lay it out::

    REPO/<name>/<version>/model.onnx
    REPO/<name>/<version>/manifest.json     (optional: a bare model.onnx is servable too)

The manifest says what the model is and how to feed it (task, inputs and outputs, feature
schema, class labels, preprocessing), where it came from (training run and metrics, package
versions) and how it was checked (sha256 of model.onnx, torch/onnxruntime parity). Versions are
positive integers; the highest healthy one is a model's default.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mlp_core.files import atomic_write_text, sha256_file
from mlp_core.tensors import TensorSpec
from mlp_serve.errors import BundleError

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
# A detection bundle exported with --format torchscript also holds the network as TorchScript.
TORCHSCRIPT_FILE = "model.torchscript"
FORMAT = "mlp.bundle"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FeatureSchema(_Strict):
    """Raw tabular features, in the order of the model's ``numeric`` and ``categorical`` inputs.

    Missing values: NaN (or null in JSON) for numbers, the empty string for categories.
    """

    numeric: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)
    categories: dict[str, list[str]] = Field(default_factory=dict)  # known values, for docs


class Parity(_Strict):
    samples: int
    max_abs_diff: float
    tolerance: float
    passed: bool


class DetectionDefaults(_Strict):
    """A detection bundle's post-processing defaults (ultralytics' predict defaults); a request's
    ``confidence``, ``iou`` and ``max_detections`` parameters override them."""

    confidence: float = Field(0.25, gt=0.0, le=1.0)
    iou: float = Field(0.7, gt=0.0, le=1.0)
    max_detections: int = Field(300, gt=0)


class Manifest(_Strict):
    format: Literal["mlp.bundle"] = FORMAT
    format_version: int = 1
    name: str
    version: int = Field(..., gt=0)
    task: str  # binary, multiclass, regression, detection
    kind: Literal["tabular", "image", "detection", "onnx"]
    inputs: list[TensorSpec]  # in JSON: name, datatype, shape (-1 dynamic, batch axis first)
    outputs: list[TensorSpec]
    feature_schema: FeatureSchema | None = None
    class_labels: list[str] | None = None
    detection: DetectionDefaults | None = None  # kind "detection" only
    preprocessing: dict[str, Any] = Field(default_factory=dict)
    sha256: str
    opset: int
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    parity: Parity | None = None
    quantization: dict[str, Any] | None = None
    training: dict[str, Any] = Field(default_factory=dict)  # run id, run folder, metrics
    packages: dict[str, str] = Field(default_factory=dict)
    created_at: str = ""


def read_manifest(folder: str | Path) -> Manifest | None:
    """The bundle's manifest, or None for a bare ``model.onnx``; a bad one is a BundleError."""
    path = Path(folder) / MANIFEST_FILE
    if not path.exists():
        return None
    try:
        return Manifest.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, ValidationError) as exc:
        raise BundleError(f"{path}: not a valid bundle manifest: {exc}") from None


def write_manifest(folder: str | Path, manifest: Manifest) -> Path:
    return atomic_write_text(Path(folder) / MANIFEST_FILE, manifest.model_dump_json(indent=2))


def verify_model_file(folder: str | Path, manifest: Manifest | None) -> Path:
    """The bundle's model.onnx, after checking it exists and matches the manifest's sha256."""
    path = Path(folder) / MODEL_FILE
    if not path.is_file():
        raise BundleError(f"{folder}: no {MODEL_FILE}")
    if manifest is not None:
        actual = sha256_file(path)
        if actual != manifest.sha256:
            raise BundleError(
                f"{path}: sha256 {actual[:12]}… does not match the manifest's "
                f"{manifest.sha256[:12]}…: the file is corrupt or was replaced",
                hint="Export the model again; the server keeps serving the other versions.",
            )
    return path
