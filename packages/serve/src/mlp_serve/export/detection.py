"""Exporting a detection run (ultralytics YOLO): the raw head as ONNX, gated against ultralytics.

The bundle's graph is the network alone, ``images`` -> ``output0`` ``[B, 4 + nc, A]``
(:mod:`.detection_network`); the server letterboxes, runs it, then NMS in numpy with each
request's thresholds. The manifest lists the outputs the server answers (Triton's convention:
``num_detections``, ``detection_boxes``, ``detection_scores``, ``detection_classes``,
``detection_labels``), the letterbox spec, the class labels and the default thresholds.

The gate (:mod:`.detection_parity`): ultralytics' ``predict`` on the run's ``weights/best.pt``
and the served path on the run's test images must find the same boxes. A failing gate writes
nothing. The ONNX file also carries ultralytics' metadata (stride, imgsz, names, task), so
``YOLO("model.onnx")`` reads it as one of ultralytics' own exports.

ultralytics is AGPL-3.0 and optional: ``pip install 'mlp-serve[yolo]'`` (it brings
``mlp-models[yolo]``); it is imported only through :mod:`mlp_models.ultralytics_env`.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from mlp_core.errors import MissingDependencyError
from mlp_core.image_spec import ImageEvalSpec
from mlp_core.tensors import TensorSpec
from mlp_models import BaseModel
from mlp_serve.bundle import TORCHSCRIPT_FILE, DetectionDefaults, Parity
from mlp_serve.detection import DETECTION_OUTPUTS, DetectionParams
from mlp_serve.errors import BundleError
from mlp_serve.export import detection_network as nets
from mlp_serve.export import parity
from mlp_serve.export.built import Built
from mlp_serve.export.detection_parity import (
    DETECTION_TOLERANCES,
    LOW_CONFIDENCE,
    compare_detections,
    detection_samples,
    letterboxed,
    raw_heads,
    served_detections,
    ultralytics_detections,
)
from mlp_serve.export.run_folder import RunFolder

INSTALL = "mlp-serve[yolo]"
KIND = "detection"
WEIGHTS = Path("weights") / "best.pt"  # ultralytics' own checkpoint, written by mlp train
REFERENCE = f"ultralytics predict on {WEIGHTS.as_posix()} (CPU, fp32)"


def is_detection_run(run: RunFolder) -> bool:
    model = (run.config.get("model") or {}).get("name")
    return (
        run.dataset.get("task") == KIND
        or run.preprocessing.get("resize_mode") == "letterbox"
        or model == "yolo"
    )


def require_ultralytics() -> None:
    """A detection run exports through ultralytics (its weights and its reference predict)."""
    if importlib.util.find_spec("ultralytics") is None:
        raise MissingDependencyError("exporting a detection (YOLO) run", INSTALL)


class DetectionExport:
    """One detection run's export: the network, its checks and its manifest entries."""

    def __init__(self, run: RunFolder, model: BaseModel) -> None:
        self.run = run
        self.spec = _letterbox_spec(run)
        network = getattr(model, "network", None)
        if not isinstance(network, torch.nn.Module):
            raise BundleError(
                f"{run.path}: the run's model ({model.model_name!r}) has no ultralytics network"
            )
        self.head = nets.raw_head(network)
        self.labels = _labels(run, nets.num_classes(network))
        self.defaults = DetectionDefaults.model_validate({})  # ultralytics' predict defaults
        self.params = DetectionParams(
            self.defaults.confidence, self.defaults.iou, self.defaults.max_detections
        )
        self.samples = detection_samples(run.data_path, self.spec)
        self.inputs = letterboxed(self.spec, self.samples.images)
        # The defaults (what a request gets), then val's low confidence (many more boxes).
        self.checks = {
            "defaults": self.params,
            "low_confidence": DetectionParams(LOW_CONFIDENCE, self.params.iou, 300),
        }
        self.reference = _reference(run, network, self.samples.images, self.spec, self.checks)
        self.records: dict[str, dict[str, Any]] = {}
        self.served: dict[str, dict[str, Any]] = {}

    @property
    def input_size(self) -> tuple[int, int]:
        return (int(self.spec.crop_size[0]), int(self.spec.crop_size[1]))

    def network(self) -> tuple[onnx.ModelProto, str]:
        return nets.to_onnx(self.head, self.input_size)

    def build(self, net: onnx.ModelProto, precision: str) -> Built:
        proto = self._with_metadata(net)
        session = parity.onnx_session(proto.SerializeToString())
        name = session.get_inputs()[0].name
        heads = raw_heads(lambda images: session.run(None, {name: images})[0], self.inputs)
        tolerance = DETECTION_TOLERANCES[precision]
        served, results = {}, {}
        for check, params in self.checks.items():
            served[check] = served_detections(heads, self.spec, self.samples.images, params)
            results[check] = compare_detections(
                self.reference[check], served[check], params, tolerance
            )
        record = {"reference": REFERENCE, "source": self.samples.source, **results["defaults"]}
        low = results["low_confidence"]
        record["low_confidence"] = {k: v for k, v in low.items() if k not in ("images", "failures")}
        record["passed"] = all(result["passed"] for result in results.values())
        failures = [f"{check}: {text}" for check, r in results.items() for text in r["failures"]]
        record["failures"] = failures[:10]
        self.records[precision], self.served[precision] = record, served
        checked = Parity(
            samples=len(self.samples.images),
            max_abs_diff=max(result["max_score_diff"] for result in results.values()),
            tolerance=tolerance.score,
            passed=record["passed"],
        )
        if not record["passed"]:
            raise BundleError(
                f"parity check failed for the {precision} detection model of {self.run.path}: "
                f"on {self.samples.source}, the served detections and {REFERENCE} differ "
                f"(paired boxes need IoU >= {tolerance.iou} and scores within {tolerance.score}"
                "):\n  " + "\n  ".join(record["failures"]),
                hint="Nothing was written. Check that the run's model and weights/best.pt come "
                "from the same training; pass --debug for the traceback.",
            )
        return Built(proto, heads, checked)

    def fidelity(self, outputs: np.ndarray) -> dict[str, Any]:
        del outputs  # the gate's detailed record says it all
        return {"checked": True, **self.records["fp32"]}

    def compare(self, fp32: Built, other: Built, precision: str) -> dict[str, Any]:
        tolerance = DETECTION_TOLERANCES[precision]
        agreement = compare_detections(
            self.served["fp32"]["defaults"],
            self.served[precision]["defaults"],
            self.params,
            tolerance,
        )
        boxes = np.abs(fp32.outputs[:, :4] - other.outputs[:, :4])
        scores = np.abs(fp32.outputs[:, 4:] - other.outputs[:, 4:])
        return {
            "method": "float16 network weights and activations, float32 interface (Cast)",
            "precision": precision,
            "samples": int(fp32.outputs.shape[0]),
            "max_abs_diff_vs_fp32": float(scores.max()) if scores.size else 0.0,
            "max_box_diff_px_vs_fp32": float(boxes.max()) if boxes.size else 0.0,
            "detections_vs_fp32": {
                k: agreement[k]
                for k in ("paired", "min_iou", "max_score_diff", "excused", "passed")
            },
            "fp32_parity": fp32.parity.model_dump(),
            "model_bytes": {"fp32": fp32.model.ByteSize(), precision: other.model.ByteSize()},
        }

    def torchscript(self, onnx_heads: np.ndarray) -> tuple[bytes, dict[str, Any]]:
        """The TorchScript file and its record: its raw head against the fp32 ONNX graph's."""
        data = nets.to_torchscript(self.head, self.input_size)
        heads = nets.run_torchscript(data, self.inputs)
        diff = parity.difference(onnx_heads, heads, regression=False)
        if not diff <= parity.TOLERANCES["fp32"] * max(1.0, float(np.abs(onnx_heads).max())):
            raise BundleError(
                f"the TorchScript network and the ONNX one differ by {diff:.3g} on the parity "
                "images: nothing was written"
            )
        record = {
            "file": TORCHSCRIPT_FILE,
            "sha256": hashlib.sha256(data).hexdigest(),
            "input": f"{nets.INPUT} FP32 [-1, 3, {self.input_size[0]}, {self.input_size[1]}]",
            "output": "the raw head [-1, 4 + classes, anchors], as the ONNX graph",
            "precision": "fp32",
            "max_abs_diff_vs_onnx": diff,
            "load": "torch.jit.load(path)",
        }
        return data, record

    def feature_schema(self) -> None:
        return None

    def preprocessing(self) -> dict[str, Any]:
        return dict(self.run.preprocessing)  # as the run wrote it

    def served_outputs(self) -> list[TensorSpec]:
        return [
            TensorSpec(name=name, datatype=datatype, shape=shape)
            for name, (datatype, shape) in DETECTION_OUTPUTS.items()
        ]

    def _with_metadata(self, net: onnx.ModelProto) -> onnx.ModelProto:
        # ultralytics' export metadata, as its AutoBackend parses it (ints, Python literals).
        proto = onnx.ModelProto()
        proto.CopyFrom(net)
        network: Any = self.head.network
        stride = int(max(network.stride.tolist()))
        metadata = {
            "description": "mlp detection bundle (raw head; NMS in the server)",
            "stride": str(stride),
            "task": "detect",
            "batch": "1",
            "imgsz": repr(list(self.input_size)),
            "names": repr(dict(enumerate(self.labels))),
            "channels": "3",
        }
        del proto.metadata_props[:]
        onnx.helper.set_model_props(proto, metadata)
        return proto


def _letterbox_spec(run: RunFolder) -> ImageEvalSpec:
    spec = ImageEvalSpec.parse(
        run.preprocessing,
        error=BundleError,
        hint="Export from a run folder written by this version of mlp train.",
        source=f"image evaluation spec of {run.files.preprocessing}",
    )
    if spec.resize_mode != "letterbox" or spec.color_mode != "RGB":
        raise BundleError(
            f"{run.files.preprocessing}: a detection run's images are letterboxed RGB; this spec "
            f"is {spec.resize_mode} {spec.color_mode}",
            hint="Export from a run folder written by this version of mlp train.",
        )
    return spec


def _labels(run: RunFolder, classes: int) -> list[str]:
    names = run.dataset.get("class_names")
    if names is None:
        return [str(i) for i in range(classes)]
    if len(names) != classes:
        raise BundleError(
            f"{run.path}: dataset.json names {len(names)} classes but the network detects {classes}"
        )
    return [str(name) for name in names]


def _reference(
    run: RunFolder,
    network: torch.nn.Module,
    images: list[np.ndarray],
    spec: ImageEvalSpec,
    checks: dict[str, DetectionParams],
) -> dict[str, list[np.ndarray]]:
    weights = run.path / WEIGHTS
    if not weights.is_file():
        raise BundleError(
            f"{weights}: no such file; the parity check runs ultralytics' predict on the run's "
            "own checkpoint",
            hint="Export a run folder that `mlp train` finished (it writes weights/best.pt).",
        )
    from mlp_models.ultralytics_env import import_ultralytics, preserved_threads

    ultralytics = import_ultralytics()
    with preserved_threads():
        yolo = ultralytics.YOLO(str(weights), task="detect")
    different = _weights_differ(network, yolo.model)  # before predict fuses yolo.model
    if different:
        raise BundleError(
            f"{run.model_path} and {weights} hold different weights ({different}): the export "
            "would not be the model ultralytics evaluated",
            hint="Both come from one training run; export an intact run folder.",
        )
    return {
        check: ultralytics_detections(yolo, images, spec, params)
        for check, params in checks.items()
    }


def _weights_differ(ours: torch.nn.Module, theirs: torch.nn.Module) -> str | None:
    """Where two networks' weights differ beyond float16 rounding (ultralytics stores its
    checkpoints in float16), or None."""
    mine = {k: v for k, v in ours.state_dict().items() if v.is_floating_point()}
    other = {k: v for k, v in theirs.state_dict().items() if v.is_floating_point()}
    if set(mine) != set(other):
        return f"{len(set(mine) ^ set(other))} tensor names differ"
    for key, value in mine.items():
        if value.shape != other[key].shape:
            return f"{key}: shape {list(value.shape)} vs {list(other[key].shape)}"
        if not torch.equal(value.detach().cpu().half(), other[key].detach().cpu().half()):
            return f"{key} differs"
    return None
