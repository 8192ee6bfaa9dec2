"""mlp export on a detection run: the bundle, its parity gate against ultralytics, the formats.

The run is written by hand (detection_export_helpers.py) around a real YOLOModel whose untrained
head finds a few dozen boxes per image; ultralytics, onnxruntime and torch are the real ones.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from detection_export_helpers import (
    CLASSES,
    IMGSZ,
    LETTERBOX_SPEC,
    detection_model,
    write_detection_run,
    write_shapes_data,
)
from PIL import Image

from mlp_core.errors import MissingDependencyError
from mlp_core.image_spec import ImageEvalSpec
from mlp_models.ultralytics_env import import_ultralytics, preserved_threads
from mlp_serve.bundle import read_manifest
from mlp_serve.cli import export as export_cli
from mlp_serve.detection import non_max_suppression
from mlp_serve.errors import BundleError
from mlp_serve.export import export_run

TEST_IMAGES = 6
ANCHORS = 8 * 8 + 4 * 4 + 2 * 2  # strides 8, 16 and 32 at 64 px


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("detection")
    data = write_shapes_data(root / "shapes", test_images=TEST_IMAGES)
    return write_detection_run(root / "run", data=data)


@pytest.fixture(scope="module")
def bundle(run: Path, tmp_path_factory) -> tuple[Path, dict]:
    """`mlp export RUN --repo REPO --format torchscript`, through the command's own code."""
    repo = tmp_path_factory.mktemp("repo")
    parser = argparse.ArgumentParser()
    export_cli.export_command.configure(parser)
    args = parser.parse_args([str(run), "--repo", str(repo), "--format", "torchscript"])
    out = StringIO()
    with redirect_stdout(out):
        assert export_cli.export_command.run(args) == 0
    lines = out.getvalue().strip().splitlines()
    return Path(lines[-1]), json.loads(lines[0])


def _images(run: Path) -> list[np.ndarray]:
    """The run's test images, decoded (RGB)."""
    data = Path(_config_data_path(run))
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(data.glob("images/test/*"))]


def _raw(session: ort.InferenceSession, images: np.ndarray) -> np.ndarray:
    return np.asarray(session.run(None, {"images": images})[0])


def _config_data_path(run: Path) -> str:
    for line in (run / "config.yaml").read_text().splitlines():
        if line.strip().startswith("path:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("no data path in config.yaml")


def test_manifest_describes_the_detection_bundle(bundle):
    path, summary = bundle
    manifest = read_manifest(path)
    assert manifest is not None
    assert (manifest.kind, manifest.task) == ("detection", "detection")
    assert summary["kind"] == "detection" and summary["parity"]["passed"] is True
    check = manifest.training["export_check"]
    assert summary["detections"]["paired"] == check["paired"] >= 10 * TEST_IMAGES
    assert summary["detections"]["low_confidence_paired"] == check["low_confidence"]["paired"]
    assert manifest.class_labels == CLASSES
    assert manifest.preprocessing == LETTERBOX_SPEC
    assert manifest.detection is not None
    assert (manifest.detection.confidence, manifest.detection.iou) == (0.25, 0.7)
    assert manifest.detection.max_detections == 300
    assert [(s.name, s.datatype, s.shape) for s in manifest.inputs] == [
        ("images", "FP32", (-1, 3, IMGSZ, IMGSZ))
    ]
    assert [(s.name, s.datatype, s.shape) for s in manifest.outputs] == [
        ("num_detections", "INT32", (-1,)),
        ("detection_boxes", "FP32", (-1, -1, 4)),
        ("detection_scores", "FP32", (-1, -1)),
        ("detection_classes", "INT32", (-1, -1)),
        ("detection_labels", "BYTES", (-1, -1)),
    ]
    assert manifest.sha256 == hashlib.sha256((path / "model.onnx").read_bytes()).hexdigest()


def test_parity_gate_compared_real_boxes(bundle):
    manifest = read_manifest(bundle[0])
    assert manifest is not None and manifest.parity is not None
    check = manifest.training["export_check"]
    assert manifest.parity.passed and manifest.parity.samples == TEST_IMAGES
    assert manifest.parity.tolerance == 1e-3 and manifest.parity.max_abs_diff <= 1e-3
    assert check["source"].startswith(f"{TEST_IMAGES} test images of")
    assert check["reference"].startswith("ultralytics predict on weights/best.pt")
    # Every box found on both sides and paired, none excused: the gate saw real detections.
    assert check["reference_detections"] >= 10 * TEST_IMAGES
    assert check["paired"] == check["reference_detections"] == check["served_detections"]
    assert check["min_iou"] >= 0.99 and check["class_mismatches"] == 0
    assert check["excused"] == {"confidence": 0, "max_detections": 0, "nms": 0}


def test_graph_is_the_raw_head_with_a_free_batch(bundle):
    path, _ = bundle
    model = onnx.load(path / "model.onnx")
    [output] = model.graph.output
    dims = [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim]
    assert output.name == "output0" and dims[1:] == [4 + len(CLASSES), ANCHORS]
    metadata = {p.key: p.value for p in model.metadata_props}
    assert metadata["stride"] == "32" and metadata["task"] == "detect"
    assert metadata["names"] == repr(dict(enumerate(CLASSES)))
    session = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).random((5, 3, IMGSZ, IMGSZ), dtype=np.float32)
    together = _raw(session, images)
    alone = np.concatenate([_raw(session, images[i : i + 1]) for i in range(5)])
    assert together.shape == (5, 4 + len(CLASSES), ANCHORS)
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-3)


def test_ultralytics_reads_the_onnx_as_its_own_export(run, bundle):
    """ultralytics' own ONNX backend and NMS on our model.onnx find the .pt's boxes: an
    independent check of the graph and its metadata (not through our NMS)."""
    path, _ = bundle
    images = [np.ascontiguousarray(image[..., ::-1]) for image in _images(run)]
    ultralytics = import_ultralytics()
    with preserved_threads():
        kwargs = {"imgsz": IMGSZ, "device": "cpu", "verbose": False}
        ours = ultralytics.YOLO(str(path / "model.onnx"), task="detect").predict(images, **kwargs)
        theirs = ultralytics.YOLO(str(run / "weights/best.pt")).predict(images, **kwargs)
    found = 0
    for a, b in zip(ours, theirs):
        assert a.names == b.names == dict(enumerate(CLASSES))
        assert len(a.boxes) == len(b.boxes)
        np.testing.assert_allclose(a.boxes.xyxy.numpy(), b.boxes.xyxy.numpy(), atol=0.05)
        np.testing.assert_allclose(a.boxes.conf.numpy(), b.boxes.conf.numpy(), atol=1e-3)
        assert a.boxes.cls.tolist() == b.boxes.cls.tolist()
        found += len(a.boxes)
    assert found >= 10 * TEST_IMAGES


def test_torchscript_file_is_the_same_network(bundle):
    path, _ = bundle
    manifest = read_manifest(path)
    assert manifest is not None
    record = manifest.training["formats"]["torchscript"]
    data = (path / "model.torchscript").read_bytes()
    assert record["file"] == "model.torchscript"
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    module = torch.jit.load(str(path / "model.torchscript"))
    session = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(1).random((3, 3, IMGSZ, IMGSZ), dtype=np.float32)
    with torch.no_grad():
        traced = module(torch.from_numpy(images)).numpy()
    exported = _raw(session, images)
    assert traced.shape == (3, 4 + len(CLASSES), ANCHORS)  # traced at batch 1, runs at 3
    np.testing.assert_allclose(traced[:, 4:], exported[:, 4:], atol=1e-4)  # scores
    np.testing.assert_allclose(traced[:, :4], exported[:, :4], rtol=1e-4, atol=1e-2)  # pixels


def test_nms_in_the_graph_drops_images_past_the_export_batch(run, bundle, tmp_path):
    """Why the bundle stops at the raw head (measured on ultralytics 8.4): its `nms=True`
    export with a dynamic batch unrolls the per-image NMS to the export batch, so the second
    and third images of a batch of three get no detections; the server's NMS finds them all."""
    weights = tmp_path / "best.pt"
    shutil.copy(run / "weights/best.pt", weights)
    ultralytics = import_ultralytics()
    with preserved_threads():
        exported = ultralytics.YOLO(str(weights)).export(
            format="onnx", nms=True, dynamic=True, batch=1, imgsz=IMGSZ, device="cpu"
        )
    spec = ImageEvalSpec.parse(LETTERBOX_SPEC, error=BundleError)
    batch = np.stack([spec.apply(Image.fromarray(image)) for image in _images(run)[:3]])
    in_graph = ort.InferenceSession(exported, providers=["CPUExecutionProvider"])
    rows = _raw(in_graph, batch)  # [3, 300, 6]: boxes, score, class
    ultralytics_counts = [int((image[:, 4] > 0.25).sum()) for image in rows]
    served = ort.InferenceSession(str(bundle[0] / "model.onnx"), providers=["CPUExecutionProvider"])
    ours = [len(d) for d in non_max_suppression(_raw(served, batch))]
    assert ultralytics_counts[0] == ours[0] > 0
    assert ultralytics_counts[1:] == [0, 0] and min(ours[1:]) > 0


def test_a_failing_gate_writes_nothing(run, tmp_path):
    """A run whose recorded preprocessing does not match how the model was evaluated (here
    its scale): the served scores differ from ultralytics', the export refuses, and the
    repository keeps only what it had."""
    broken = tmp_path / "run"
    shutil.copytree(run, broken)
    spec = dict(LETTERBOX_SPEC, scale=1 / 180)
    (broken / "preprocessing.json").write_text(json.dumps(spec))
    repo = tmp_path / "repo"
    (repo / "shapes" / "1").mkdir(parents=True)
    with pytest.raises(BundleError, match="parity check failed for the fp32 detection model"):
        export_run(broken, repo, name="shapes", log_to_mlflow=False)
    assert sorted(p.name for p in (repo / "shapes").iterdir()) == ["1"]


def test_model_and_checkpoint_must_hold_the_same_weights(run, tmp_path):
    other = tmp_path / "run"
    shutil.copytree(run, other)
    network = detection_model(bias=-2.0).network.half()
    torch.save({"model": None, "ema": network}, other / "weights/best.pt")
    with pytest.raises(BundleError, match="hold different weights"):
        export_run(other, tmp_path / "repo", log_to_mlflow=False)
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").rglob("model.onnx"))


def test_without_ultralytics_the_error_names_the_extra(run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ultralytics", None)  # as if not installed
    with pytest.raises(MissingDependencyError) as error:
        export_run(run, tmp_path / "repo", log_to_mlflow=False)
    assert error.value.install == "mlp-serve[yolo]"
    assert error.value.hint == "pip install 'mlp-serve[yolo]'"


def test_options_that_do_not_apply_are_refused(run, tabular_run, tmp_path):
    with pytest.raises(BundleError, match="--quantize int8 is not available for detection"):
        export_run(run, tmp_path / "repo", quantize="int8", log_to_mlflow=False)
    with pytest.raises(BundleError, match="--format torchscript is for detection runs"):
        export_run(tabular_run, tmp_path / "repo", export_format="torchscript")
    assert not (tmp_path / "repo").exists()
