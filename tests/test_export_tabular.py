"""`mlp export` on a real penguins run: raw rows in, the trained pipeline's answers out."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from mlp_core.files import sha256_file
from mlp_data.tabular import TabularPreprocessor
from mlp_models import load_model
from mlp_serve.errors import BundleError
from mlp_serve.export import export_run

ROOT = Path(__file__).resolve().parents[1]
ROWS = pd.DataFrame(
    {
        "island": ["Torgersen", "Biscoe", "Atlantis", None, "Dream", "Biscoe", "Dream"],
        "bill_length_mm": [39.1, 46.5, 50.0, np.nan, 49.0, 45.2, 38.0],
        "bill_depth_mm": [18.7, 15.0, 16.0, 17.0, np.nan, 14.1, 18.1],
        "flipper_length_mm": [181.0, 215.0, 200.0, 190.0, 195.0, 220.0, 185.0],
        "body_mass_g": [3750.0, 5000.0, 4200.0, 3900.0, 3700.0, 5400.0, np.nan],
        "sex": ["male", "female", "male", None, "alien", "male", "female"],
        "year": [2007.0, 2008.0, 2009.0, 2008.0, 2007.0, 2009.0, 2008.0],
    }
)


@pytest.fixture(scope="module")
def run_dir(penguins_run) -> Path:
    return penguins_run  # trained once per session in conftest.py


@pytest.fixture(scope="module")
def bundle(run_dir, tmp_path_factory):
    cwd = Path.cwd()
    os.chdir(ROOT)  # so the exporter finds the run's data file for its checks
    try:
        return export_run(run_dir, tmp_path_factory.mktemp("repo"))
    finally:
        os.chdir(cwd)


def raw_feeds(manifest, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    schema = manifest.feature_schema
    numeric = frame[schema.numeric].to_numpy(dtype=np.float32)
    categorical = frame[schema.categorical].astype(object)
    categorical = categorical.where(categorical.notna(), "").to_numpy(dtype=object)
    return {"numeric": numeric, "categorical": categorical}


def trained_pipeline(run_dir: Path, frame: pd.DataFrame) -> np.ndarray:
    """mlp-data's own preprocessor from the run, then the trained model: the reference."""
    saved = json.loads((run_dir / "preprocessing.json").read_text())
    prep = TabularPreprocessor.from_dict(saved["preprocessor"])
    arrays = prep.transform(frame)
    model = load_model(run_dir / "model")
    return model.predict({k: torch.from_numpy(v) for k, v in arrays.items()}).numpy()


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])


def test_raw_rows_match_the_trained_pipeline(run_dir, bundle):
    manifest = bundle.manifest
    expected = trained_pipeline(run_dir, ROWS)
    probabilities, labels = session(bundle.path).run(
        ["probabilities", "label"], raw_feeds(manifest, ROWS)
    )
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)
    assert list(labels) == [manifest.class_labels[i] for i in expected.argmax(axis=1)]
    # rows 2-4 hold an unseen island ("Atlantis"), missing values and an unseen sex
    assert math.isclose(float(probabilities[2].sum()), 1.0, rel_tol=1e-5)


def test_dynamic_batch(bundle):
    feeds = raw_feeds(bundle.manifest, ROWS)
    run = session(bundle.path)
    one = run.run(["probabilities"], {k: v[:1] for k, v in feeds.items()})[0]
    seven = run.run(["probabilities"], feeds)[0]
    assert one.shape == (1, 3) and seven.shape == (7, 3)
    np.testing.assert_allclose(one[0], seven[0], atol=1e-6)


def test_manifest(run_dir, bundle):
    manifest = bundle.manifest
    assert bundle.path.parent.name == "penguins" and bundle.path.name == "1"
    assert manifest.sha256 == sha256_file(bundle.path / "model.onnx")
    assert manifest.kind == "tabular" and manifest.task == "multiclass"
    assert manifest.class_labels == ["Adelie", "Chinstrap", "Gentoo"]
    assert manifest.feature_schema.categorical == ["island", "sex"]
    assert manifest.feature_schema.categories["island"] == ["Biscoe", "Dream", "Torgersen"]
    assert [i.name for i in manifest.inputs] == ["numeric", "categorical"]
    assert (
        manifest.preprocessing["preprocessor"]
        == json.loads((run_dir / "preprocessing.json").read_text())["preprocessor"]
    )
    assert manifest.parity.passed and manifest.parity.max_abs_diff <= 1e-4
    assert manifest.parity.samples > 300  # the data file's rows are among the samples
    check = manifest.training["export_check"]
    assert check["checked"] and check["passed"] and check["rows"] == 344
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert manifest.training["metrics"] == metrics
    assert manifest.training["run_id"] == bundle.mlflow["run_id"]


def test_model_logged_to_mlflow(run_dir, bundle):
    import mlflow.onnx
    from mlflow import MlflowClient

    info = bundle.mlflow
    assert info["logged"] is True and info["flavor"] == "onnx"
    client = MlflowClient(tracking_uri=info["tracking_uri"])
    model_id = info["model_uri"].removeprefix("models:/")
    logged = client.get_logged_model(model_id)
    assert logged.source_run_id == info["run_id"]
    assert client.get_run(info["run_id"]).data.tags["mlp.export.version"] == "1"
    # by its artifact location: the fluent models:/ URI would read the global tracking URI
    restored = mlflow.onnx.load_model(logged.artifact_location)
    assert restored.SerializeToString() == onnx.load(bundle.path / "model.onnx").SerializeToString()


def test_int8_reports_the_accuracy_change(run_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    result = export_run(run_dir, tmp_path, quantize="int8", log_to_mlflow=False)
    q = result.manifest.quantization
    assert result.manifest.precision == "int8"
    assert q["accuracy"]["rows"] == 344
    assert q["accuracy"]["change"] == pytest.approx(q["accuracy"]["int8"] - q["accuracy"]["fp32"])
    assert abs(q["accuracy"]["change"]) <= 0.05 and q["argmax_agreement"] >= 0.95
    assert q["model_bytes"]["int8"] < q["model_bytes"]["fp32"]


def test_fp16_bundle(run_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    result = export_run(run_dir, tmp_path, fp16=True, log_to_mlflow=False)
    assert result.manifest.precision == "fp16" and result.manifest.parity.tolerance == 1e-2
    probabilities = session(result.path).run(["probabilities"], raw_feeds(result.manifest, ROWS))[0]
    np.testing.assert_allclose(probabilities, trained_pipeline(run_dir, ROWS), atol=1e-2)


def test_a_corrupt_preprocessor_fails_the_export(run_dir, tmp_path, monkeypatch):
    broken = tmp_path / "broken-run"
    shutil.copytree(run_dir, broken)
    saved = json.loads((broken / "preprocessing.json").read_text())
    for column in saved["preprocessor"]["numeric"]:
        column["scale"] *= 10
    (broken / "preprocessing.json").write_text(json.dumps(saved))
    monkeypatch.chdir(ROOT)
    with pytest.raises(BundleError, match="does not reproduce the run"):
        export_run(broken, tmp_path / "repo", log_to_mlflow=False)
    assert not (tmp_path / "repo" / "penguins").exists() or not any(
        (tmp_path / "repo" / "penguins").iterdir()
    )
