"""mlp export on a real detection run (`mlp train` through ultralytics, tracked in MLflow).

The bundle, its gate and its formats on a hand-made run are tested in
packages/serve/tests_export/test_detection_export.py; here the run is a real one: the export
is logged to the run's MLflow record (with its TorchScript file), fp16 passes its own gate, and the `mlp` command without
ultralytics names the extra to install.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import yaml
from detection_helpers import CLASSES, IMGSZ, shapes_config

from mlp_serve.export import export_run

MLP = Path(sys.executable).parent / "mlp"


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory) -> Path:
    """One epoch of the shapes config, tracked in a local MLflow store beside the runs."""
    from mlp_train.run import train

    root = tmp_path_factory.mktemp("detection-export")
    config_path = shapes_config(root, epochs=1)
    config = yaml.safe_load(config_path.read_text())
    config["training"]["tracking"] = {"backend": "mlflow"}
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        return train(config_path).run_dir
    finally:
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved


def test_the_onnx_model_is_logged_to_the_runs_mlflow_record(tracked_run, tmp_path):
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts
    from mlflow.onnx import load_model as load_onnx_model

    result = export_run(tracked_run, tmp_path / "repo", export_format="torchscript")
    manifest = result.manifest
    assert result.path == tmp_path / "repo" / "shapes" / "1"  # named after the dataset folder
    assert manifest.kind == "detection" and manifest.class_labels == CLASSES
    assert manifest.parity is not None and manifest.parity.passed
    check = manifest.training["export_check"]
    # One short training finds few boxes at the default 0.25; val's 0.001 compares many.
    assert check["low_confidence"]["paired"] >= 20 and check["low_confidence"]["min_iou"] >= 0.99
    info = result.mlflow
    assert info["logged"] is True and info["flavor"] == "onnx"
    assert manifest.training["run_id"] == info["run_id"]
    client = MlflowClient(tracking_uri=info["tracking_uri"])
    logged = client.get_logged_model(info["model_uri"].removeprefix("models:/"))
    assert logged.source_run_id == info["run_id"]
    assert client.get_run(info["run_id"]).data.tags["mlp.export.version"] == "1"
    restored = load_onnx_model(logged.artifact_location)
    assert restored.SerializeToString() == onnx.load(result.path / "model.onnx").SerializeToString()
    # The bundle's other files travel with it: its manifest and the TorchScript network.
    local = Path(download_artifacts(artifact_uri=logged.artifact_location, dst_path=str(tmp_path)))
    files = {p.name: p for p in local.rglob("*") if p.is_file()}
    torchscript = (result.path / "model.torchscript").read_bytes()
    assert files["model.torchscript"].read_bytes() == torchscript
    assert "manifest.json" in files


def test_fp16_bundle_passes_its_own_gate(tracked_run, tmp_path):
    result = export_run(tracked_run, tmp_path / "repo", fp16=True, log_to_mlflow=False)
    manifest = result.manifest
    assert manifest.precision == "fp16" and manifest.parity is not None
    assert manifest.parity.passed and manifest.parity.tolerance == 1e-2
    assert [(s.name, s.datatype) for s in manifest.inputs] == [("images", "FP32")]
    assert manifest.inputs[0].shape == (-1, 3, IMGSZ, IMGSZ)
    record = manifest.quantization
    assert record is not None and record["detections_vs_fp32"]["passed"] is True
    assert record["max_abs_diff_vs_fp32"] <= 1e-2
    assert record["model_bytes"]["fp16"] < 0.6 * record["model_bytes"]["fp32"]
    graph = onnx.load(result.path / "model.onnx").graph
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)


def test_mlp_export_without_ultralytics_names_the_extra(tracked_run, tmp_path):
    """The real `mlp` command in a process where ultralytics cannot be imported."""
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\nsys.modules['ultralytics'] = None  # as if not installed\n"
    )
    env = {**os.environ, "PYTHONPATH": str(blocker)}
    env.pop("MLP_DEBUG", None)
    done = subprocess.run(
        [str(MLP), "export", str(tracked_run), "--repo", str(tmp_path / "repo")],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert done.returncode == 1, done.stderr  # mlp's exit status for an MlpError
    assert "mlp export: error: exporting a detection (YOLO) run needs a package" in done.stderr
    assert "hint: pip install 'mlp-serve[yolo]'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "repo").exists()
