"""``export_run``: a training run folder in, a checked model bundle out.

1. read the run folder and load its model (mlp_models);
2. export the network (torch.onnx) and wrap it in the serving graph (:mod:`.graph`);
3. check parity with the torch pipeline on the same samples (:mod:`.parity`) and, for tabular
   runs, that the pipeline reproduces the run's recorded quality (:mod:`.fidelity`);
4. optionally convert the network to int8 (dynamic quantisation) or fp16, and check again;
5. write ``model.onnx`` and ``manifest.json`` (and ``model.torchscript`` when asked) into a hidden temporary folder beside the target
   and rename it to ``REPO/<name>/<version>/``: a half-written bundle is never visible, and an
   existing version is never overwritten;
6. log the model to the run's MLflow record when there is one.

Detection runs (ultralytics YOLO) export the raw head and are gated against ultralytics'
predict on the run's ``.pt``: see :mod:`.detection`.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from mlp_core.files import sha256_file
from mlp_core.image_spec import ImageEvalSpec
from mlp_core.tabular_spec import TabularPreprocessing
from mlp_core.tensors import TensorSpec
from mlp_core.versions import mlp_packages
from mlp_models import BaseModel, load_model
from mlp_serve.bundle import (
    MODEL_FILE,
    TORCHSCRIPT_FILE,
    FeatureSchema,
    Manifest,
    write_manifest,
)
from mlp_serve.datatypes import from_onnx_type
from mlp_serve.errors import BundleError
from mlp_serve.export import detection, fidelity, graph, network, parity
from mlp_serve.export.built import Built
from mlp_serve.export.mlflow_log import log_bundle
from mlp_serve.export.run_folder import RunFolder, read_run_folder
from mlp_serve.export.tabular_reference import read_preprocessing, reference_inputs

QUANTIZE_CHOICES = ("int8",)
FORMATS = ("onnx", "torchscript")  # ONNX is always written (the server's); torchscript adds one
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_TOOL_PACKAGES = ("torch", "onnx", "onnxruntime-gpu", "onnxruntime", "onnxscript")


@dataclass
class ExportResult:
    path: Path
    manifest: Manifest
    mlflow: dict[str, Any] = field(default_factory=dict)


def export_run(
    run_dir: str | os.PathLike[str],
    repo: str | os.PathLike[str],
    *,
    name: str | None = None,
    version: int | None = None,
    quantize: str | None = None,
    fp16: bool = False,
    log_to_mlflow: bool = True,
    export_format: str = "onnx",
) -> ExportResult:
    """Export the run in ``run_dir`` as ``repo/<name>/<version>/``; see the module docstring.

    ``export_format="torchscript"`` also writes ``model.torchscript`` (detection runs).
    """
    if export_format not in FORMATS:
        raise BundleError(f"format must be one of {FORMATS}, got {export_format!r}")
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise BundleError(f"quantize must be one of {QUANTIZE_CHOICES}, got {quantize!r}")
    if quantize and fp16:
        raise BundleError("choose one of int8 quantisation and fp16, not both")
    if version is not None and version < 1:
        raise BundleError(f"version must be a positive integer, got {version}")
    run = read_run_folder(Path(run_dir))
    detecting = detection.is_detection_run(run)
    _check_detection_options(run, detecting, quantize, export_format)
    name = _bundle_name(run, name, detecting=detecting)
    target_parent = Path(repo) / name
    if version is not None and (target_parent / str(version)).exists():
        raise _exists(target_parent / str(version))

    model = load_model(run.model_path)
    kind = _kind(run, model)
    exported: _TabularExport | _ImageExport | detection.DetectionExport
    if kind == "detection":
        exported = detection.DetectionExport(run, model)
        labels: list[str] | None = exported.labels
        net, exporter = exported.network()
    else:
        labels = _class_labels(run, model)
        net, exporter = network.export_network(model)
        if kind == "tabular":
            exported = _TabularExport(run, model, labels)
        else:
            exported = _ImageExport(run, model, labels)
    fp32 = exported.build(net, "fp32")
    training = _training_record(run, model, exporter)
    training["export_check"] = exported.fidelity(fp32.outputs)
    extra_files: dict[str, bytes] = {}
    if export_format == "torchscript" and isinstance(exported, detection.DetectionExport):
        data, record = exported.torchscript(fp32.outputs)
        extra_files[TORCHSCRIPT_FILE] = data
        training["formats"] = {"onnx": MODEL_FILE, "torchscript": record}

    shipped, precision, quantization = fp32, "fp32", None
    if quantize == "int8":
        shipped = exported.build(network.to_int8(net), "int8")
        precision = "int8"
        quantization = exported.compare(fp32, shipped, "int8")
    elif fp16:
        shipped = exported.build(network.to_fp16(net), "fp16")
        precision = "fp16"
        quantization = exported.compare(fp32, shipped, "fp16")

    is_detection = isinstance(exported, detection.DetectionExport)
    manifest = Manifest(
        name=name,
        version=1,  # set once the version folder is chosen
        task=detection.KIND if is_detection else model.task,
        kind=kind,
        inputs=_specs(shipped.model.graph.input),
        # A detection graph ends at the raw head; the manifest lists what the server answers.
        outputs=exported.served_outputs() if is_detection else _specs(shipped.model.graph.output),
        feature_schema=exported.feature_schema(),
        class_labels=labels,
        detection=exported.defaults if is_detection else None,
        preprocessing=exported.preprocessing(),
        sha256="",
        opset=network.opset_of(shipped.model),
        precision=precision,
        parity=shipped.parity,
        quantization=quantization,
        training=training,
        packages=_packages(),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    path, manifest = _write_bundle(target_parent, version, shipped.model, manifest, extra_files)
    tracked = log_bundle(run, path, name=name, version=manifest.version) if log_to_mlflow else {}
    return ExportResult(path=path, manifest=manifest, mlflow=tracked)


# -- the two kinds ------------------------------------------------------------------------------


class _TabularExport:
    def __init__(self, run: RunFolder, model: BaseModel, labels: list[str] | None) -> None:
        self.run, self.model, self.labels = run, model, labels
        source = str(run.files.preprocessing)
        self.pipeline = read_preprocessing(run.preprocessing, source=source)
        _check_tabular_fit(self.pipeline, model, source)
        data = run.config.get("data") or {}
        self.samples = parity.tabular_samples(
            self.pipeline, run.data_path, delimiter=str(data.get("delimiter") or ",")
        )
        self.reference = parity.torch_outputs(
            model, reference_inputs(self.pipeline, self.samples.numeric, self.samples.categorical)
        )

    def build(self, net: onnx.ModelProto, precision: str) -> Built:
        proto = graph.tabular_model(
            net, self.pipeline, task=self.model.task, class_labels=self.labels
        )
        session = parity.onnx_session(proto.SerializeToString())
        outputs = parity.served(parity.run_onnx(session, self.samples.feeds(self.pipeline)))
        checked = parity.check_parity(
            self.reference,
            outputs,
            precision=precision,
            regression=self.model.task == "regression",
            what=f"{precision} tabular model of {self.run.path} ({self.samples.source})",
        )
        return Built(proto, outputs, checked)

    def fidelity(self, outputs: np.ndarray) -> dict[str, Any]:
        data = self.run.data_path
        return fidelity.reproduce(
            self.pipeline,
            outputs,
            self.samples.targets,
            self.run.metrics,
            source=data.name if data else "data",
        )

    def compare(self, fp32: Built, other: Built, precision: str) -> dict[str, Any]:
        record = _compare(fp32, other, precision, self.model.task)
        targets = self.samples.targets
        if targets and self.model.task != "regression":
            classes = {c: i for i, c in enumerate(self.pipeline.target_classes or [])}
            rows = [(r, classes[t]) for r, t in enumerate(targets) if t in classes]
            if rows:
                index = np.array([r for r, _ in rows])
                truth = np.array([c for _, c in rows])
                before = float(np.mean(fp32.outputs[index].argmax(1) == truth))
                after = float(np.mean(other.outputs[index].argmax(1) == truth))
                record["accuracy"] = {
                    "rows": len(rows),
                    "fp32": before,
                    precision: after,
                    "change": after - before,
                }
        return record

    def feature_schema(self) -> FeatureSchema:
        p = self.pipeline
        return FeatureSchema(
            numeric=p.numeric_names,
            categorical=p.categorical_names,
            categories={c.name: list(c.categories) for c in p.categorical},
        )

    def preprocessing(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "type": "tabular",
            "folded_into_graph": True,
            "preprocessor": self.run.preprocessing["preprocessor"],  # as the run wrote it
        }
        if "row_schema" in self.run.preprocessing:
            record["row_schema"] = self.run.preprocessing["row_schema"]
        return record


class _ImageExport:
    def __init__(self, run: RunFolder, model: BaseModel, labels: list[str] | None) -> None:
        self.run, self.model, self.labels = run, model, labels
        # Checked as the server will read it, so a spec it cannot apply fails the export.
        self.spec = ImageEvalSpec.parse(
            run.preprocessing,
            error=BundleError,
            hint="Export from a run folder written by this version of mlp train.",
            source=f"image evaluation spec of {run.files.preprocessing}",
        )
        shape = model.signature().inputs[0].shape[1:]
        if self.spec.channels != shape[0]:
            raise BundleError(
                f"{run.path}: the evaluation spec normalises {self.spec.channels} channel(s) but "
                f"the model takes {shape[0]}"
            )
        self.images = parity.image_samples(self.spec, tuple(shape))
        self.reference = parity.torch_outputs(model, {"image": self.images})

    def build(self, net: onnx.ModelProto, precision: str) -> Built:
        proto = graph.image_model(net, task=self.model.task, class_labels=self.labels)
        session = parity.onnx_session(proto.SerializeToString())
        outputs = parity.served(parity.run_onnx(session, {"image": self.images}))
        checked = parity.check_parity(
            self.reference,
            outputs,
            precision=precision,
            regression=False,
            what=f"{precision} image model of {self.run.path}",
        )
        return Built(proto, outputs, checked)

    def fidelity(self, outputs: np.ndarray) -> dict[str, Any]:
        return {"checked": False, "reason": "image models: the server applies the eval spec"}

    def compare(self, fp32: Built, other: Built, precision: str) -> dict[str, Any]:
        return _compare(fp32, other, precision, self.model.task)

    def feature_schema(self) -> None:
        return None

    def preprocessing(self) -> dict[str, Any]:
        return dict(self.run.preprocessing)  # as the run wrote it


def _compare(fp32: Built, other: Built, precision: str, task: str) -> dict[str, Any]:
    """How the converted model's outputs differ from the fp32 graph's on the parity samples."""
    regression = task == "regression"
    record: dict[str, Any] = {
        "method": "onnxruntime.quantization.quantize_dynamic (weights QInt8, MatMul)"
        if precision == "int8"
        else "float16 network weights and activations, float32 interface (Cast)",
        "precision": precision,
        "samples": int(fp32.outputs.shape[0]),
        "max_abs_diff_vs_fp32": parity.difference(
            fp32.outputs, other.outputs, regression=regression
        ),
        "fp32_parity": fp32.parity.model_dump(),
        "model_bytes": {"fp32": fp32.model.ByteSize(), precision: other.model.ByteSize()},
    }
    if not regression:
        agree = fp32.outputs.argmax(axis=1) == other.outputs.argmax(axis=1)
        record["argmax_agreement"] = float(np.mean(agree))
    return record


# -- checks and records -------------------------------------------------------------------------


def _kind(run: RunFolder, model: BaseModel) -> Literal["tabular", "image", "detection"]:
    if detection.is_detection_run(run) and model.task == detection.KIND:
        return "detection"
    inputs = model.signature().input_names
    if run.preprocessing.get("type") == "tabular" and inputs[0] == "numeric":
        return "tabular"
    if run.preprocessing.get("kind") == "image" and inputs == ["image"]:
        return "image"
    raise BundleError(
        f"{run.path}: cannot export a {model.model_name!r} model with "
        f"{run.preprocessing.get('type') or run.preprocessing.get('kind') or 'unknown'} "
        "preprocessing: the exporter handles tabular, image classification and detection runs",
    )


def _class_labels(run: RunFolder, model: BaseModel) -> list[str] | None:
    if model.task == "regression":
        return None
    names = run.dataset.get("class_names")
    width = model.signature().outputs[0].shape[1]
    classes = 2 if model.task == "binary" else width
    if names is None:
        return [str(i) for i in range(classes)]
    if len(names) != classes:
        raise BundleError(
            f"{run.path}: dataset.json names {len(names)} classes but the model predicts {classes}"
        )
    return [str(n) for n in names]


def _check_detection_options(
    run: RunFolder, detecting: bool, quantize: str | None, export_format: str
) -> None:
    if detecting:
        detection.require_ultralytics()
        if quantize:
            raise BundleError(
                f"{run.path}: --quantize {quantize} is not available for detection runs: "
                "dynamic int8 quantisation covers MatMul layers, and a YOLO network is "
                "convolutions",
                hint="Use --fp16 for a smaller, faster detection model.",
            )
    elif export_format != "onnx":
        raise BundleError(
            f"{run.path}: --format {export_format} is for detection runs; tabular and image "
            "bundles are ONNX with their preprocessing in the graph",
        )


def _check_tabular_fit(pipeline: TabularPreprocessing, model: BaseModel, source: str) -> None:
    spec = {s.name: s for s in model.signature().inputs}
    width = spec["numeric"].shape[1]
    cards = list(getattr(model, "categorical_cardinalities", []))
    if width != pipeline.network_width or cards != pipeline.cardinalities:
        raise BundleError(
            f"{source} does not fit the run's model: it makes {pipeline.network_width} numeric "
            f"column(s) and embeddings {pipeline.cardinalities}, the model takes {width} and "
            f"{cards}",
            hint="The preprocessing.json and model of a run folder must come from the same run.",
        )


def _training_record(run: RunFolder, model: BaseModel, exporter: str) -> dict[str, Any]:
    data = run.config.get("data") or {}
    return {
        "run_id": run.mlflow_run_id,
        "run_name": run.run_name,
        "run_dir": str(run.path.resolve()),
        "experiment": (run.config.get("training") or {}).get("experiment"),
        "metrics": run.metrics,
        "model": model.model_name,
        "model_config": model.get_config(),
        "data": {"adapter": data.get("adapter"), "path": str(data.get("path"))},
        "exporter": f"torch.onnx.export(dynamo={exporter == 'dynamo'})",
    }


def _specs(values: Iterable[onnx.ValueInfoProto]) -> list[TensorSpec]:
    specs = []
    for value in values:
        tensor = value.type.tensor_type
        onnx_type = _ONNX_TYPES.get(tensor.elem_type)
        if onnx_type is None:
            raise BundleError(f"graph tensor {value.name!r} has an unservable element type")
        shape = tuple(
            d.dim_value if d.dim_value and not d.dim_param else -1 for d in tensor.shape.dim
        )
        specs.append(TensorSpec(name=value.name, datatype=from_onnx_type(onnx_type), shape=shape))
    return specs


_ONNX_TYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "tensor(float)",
    onnx.TensorProto.FLOAT16: "tensor(float16)",
    onnx.TensorProto.DOUBLE: "tensor(double)",
    onnx.TensorProto.INT64: "tensor(int64)",
    onnx.TensorProto.INT32: "tensor(int32)",
    onnx.TensorProto.STRING: "tensor(string)",
    onnx.TensorProto.BOOL: "tensor(bool)",
}


def _packages() -> dict[str, str]:
    found = dict(mlp_packages())
    for name in _TOOL_PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            found[name] = package_version(name)
    found["python"] = platform.python_version()
    return found


def _bundle_name(run: RunFolder, name: str | None, *, detecting: bool = False) -> str:
    if name is None:
        data_path = (run.config.get("data") or {}).get("path")
        stem = Path(str(data_path)).stem if data_path else ""
        if detecting and stem == "data" and data_path:
            # A YOLO dataset is a data.yaml or a folder named data (examples/shapes/data): the
            # folder above names it.
            stem = Path(str(data_path)).parent.name or stem
        model_name = (run.config.get("model") or {}).get("name") or "model"
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem or model_name).strip("-.") or "model"
    if not _SAFE_NAME.match(name):
        raise BundleError(
            f"model name {name!r}: use letters, digits, '.', '_' and '-' (not first)",
            hint="Pass --name with a plain name; it becomes a folder of the repository.",
        )
    return name


def _exists(path: Path) -> BundleError:
    return BundleError(
        f"{path} already exists: a bundle version is never overwritten",
        hint="Leave out --version to take the next free one, or pass another version.",
    )


def _write_bundle(
    parent: Path,
    version: int | None,
    model: onnx.ModelProto,
    manifest: Manifest,
    extra_files: dict[str, bytes] | None = None,
) -> tuple[Path, Manifest]:
    parent.mkdir(parents=True, exist_ok=True)
    # Hidden and not a number: a server scanning the repository never takes it for a version.
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=parent))
    try:
        _readable(staging)
        onnx.save(model, staging / MODEL_FILE)
        digest = sha256_file(staging / MODEL_FILE)
        for file_name, data in (extra_files or {}).items():
            (staging / file_name).write_bytes(data)
            _readable(staging / file_name)
        for _ in range(100):
            chosen = version if version is not None else _next_version(parent)
            target = parent / str(chosen)
            if target.exists():
                if version is not None:
                    raise _exists(target)
                continue
            final = manifest.model_copy(update={"version": chosen, "sha256": digest})
            _readable(write_manifest(staging, Manifest.model_validate(final.model_dump())))
            try:
                # One rename makes the finished bundle appear whole. rename(2) refuses a target
                # that is a non-empty folder, so a version that appeared meanwhile survives.
                os.rename(staging, target)
            except OSError:
                if version is not None:
                    raise _exists(target) from None
                continue
            return target, final
        raise BundleError(f"{parent}: could not claim a free version number")
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _readable(path: Path) -> None:
    # mkdtemp and the atomic writer make private files; a bundle is for a server to read.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _next_version(parent: Path) -> int:
    taken = [int(p.name) for p in parent.iterdir() if p.name.isdigit()]
    return max(taken, default=0) + 1


__all__ = ["FORMATS", "QUANTIZE_CHOICES", "ExportResult", "export_run"]
