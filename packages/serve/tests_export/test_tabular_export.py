from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from export_helpers import CATEGORICAL, NUMERIC, write_tabular_run

from mlp_models import load_model
from mlp_serve.bundle import read_manifest, verify_model_file
from mlp_serve.errors import BundleError
from mlp_serve.export import export_run

ROWS_NUMERIC = np.array(
    [[11.0, 3600.0], [math.nan, 4100.0], [20.0, math.nan], [math.nan, math.nan], [9.5, 2800.0],
     [13.0, 3300.0], [12.0, 3500.0]],
    dtype=np.float32,
)  # fmt: skip
ROWS_CATEGORICAL = np.array(
    [["red", "2007"], ["", "2008"], ["purple", ""], ["", ""], ["green", "2008.0"],
     ["blue", "1999"], ["red", "2008"]],
    dtype=object,
)  # fmt: skip


def expected_slots(raw: str, column: dict) -> int:
    """By hand: "" -> fill slot, known -> 2 + position (a whole float names the integer)."""
    if raw == "":
        return column["fill_index"]
    key = raw[:-2] if raw.endswith(".0") else raw
    categories = column["categories"]
    return 2 + categories.index(key) if key in categories else 1


def expected_network_inputs(encoding: str) -> dict[str, torch.Tensor]:
    numeric = []
    for j, col in enumerate(NUMERIC):
        values = np.where(np.isnan(ROWS_NUMERIC[:, j]), col["fill_value"], ROWS_NUMERIC[:, j])
        numeric.append((values.astype(np.float64) - col["offset"]) / col["scale"])
    slots = np.array(
        [[expected_slots(r[j], c) for j, c in enumerate(CATEGORICAL)] for r in ROWS_CATEGORICAL]
    )
    columns = [np.stack(numeric, axis=1)]
    if encoding == "onehot":
        for j, col in enumerate(CATEGORICAL):
            columns.append(np.eye(2 + len(col["categories"]))[slots[:, j]])
        return {"numeric": torch.tensor(np.concatenate(columns, axis=1), dtype=torch.float32)}
    return {
        "numeric": torch.tensor(columns[0], dtype=torch.float32),
        "categorical": torch.tensor(slots, dtype=torch.int64),
    }


def run_bundle(bundle: Path, rows: slice = slice(None)) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feeds = {"numeric": ROWS_NUMERIC[rows], "categorical": ROWS_CATEGORICAL[rows]}
    return dict(zip(names, session.run(names, feeds)))


@pytest.mark.parametrize(("encoding", "task"), [("index", "binary"), ("onehot", "multiclass")])
def test_raw_rows_match_the_model_on_hand_preprocessed_inputs(tmp_path, encoding, task):
    run = write_tabular_run(tmp_path / "run", encoding=encoding, task=task)
    result = export_run(run, tmp_path / "repo", log_to_mlflow=False)

    model = load_model(run / "model")
    inputs = expected_network_inputs(encoding)
    with torch.no_grad():
        probabilities = model.predict(inputs).numpy()
    outputs = run_bundle(result.path)
    assert (
        outputs["probabilities"].shape
        == probabilities.shape
        == (7, 3 if task == "multiclass" else 2)
    )
    np.testing.assert_allclose(outputs["probabilities"], probabilities, atol=1e-5)
    labels = json.loads((run / "dataset.json").read_text())["class_names"]
    assert list(outputs["label"]) == [labels[i] for i in probabilities.argmax(axis=1)]
    assert result.manifest.parity.passed and result.manifest.parity.max_abs_diff < 1e-4
    assert result.manifest.parity.samples > 60  # synthetic rows + edge rows


def test_dynamic_batch_and_manifest(tmp_path, tabular_run):
    result = export_run(tabular_run, tmp_path / "repo", log_to_mlflow=False)
    assert result.path == tmp_path / "repo" / "no-such-data" / "1"
    one = run_bundle(result.path, slice(0, 1))
    seven = run_bundle(result.path)
    assert one["probabilities"].shape == (1, 2) and seven["label"].shape == (7,)
    np.testing.assert_allclose(one["probabilities"][0], seven["probabilities"][0], atol=1e-6)

    manifest = read_manifest(result.path)
    assert manifest == result.manifest
    verify_model_file(result.path, manifest)
    digest = hashlib.sha256((result.path / "model.onnx").read_bytes()).hexdigest()
    assert manifest.sha256 == digest
    assert manifest.kind == "tabular" and manifest.task == "binary"
    assert [(s.name, s.datatype, s.shape) for s in manifest.inputs] == [
        ("numeric", "FP32", (-1, 2)),
        ("categorical", "BYTES", (-1, 2)),
    ]
    # The manifest's JSON keeps its form: each tensor is name, datatype and shape as a list.
    written = json.loads((result.path / "manifest.json").read_text(encoding="utf-8"))
    assert written["inputs"][0] == {"name": "numeric", "datatype": "FP32", "shape": [-1, 2]}
    assert [(s.name, s.datatype, s.shape) for s in manifest.outputs] == [
        ("probabilities", "FP32", (-1, 2)),
        ("label", "BYTES", (-1,)),
    ]
    assert manifest.feature_schema.numeric == ["length", "mass"]
    assert manifest.feature_schema.categories["year"] == ["2007", "2008"]
    assert manifest.class_labels == ["no", "yes"]
    assert manifest.preprocessing["folded_into_graph"] is True
    assert manifest.preprocessing["preprocessor"]["numeric"] == NUMERIC
    assert manifest.opset >= 17 and manifest.precision == "fp32"
    assert manifest.training["export_check"]["checked"] is False  # no data file to score
    assert {"torch", "onnx", "mlp-serve", "mlp-models"} <= set(manifest.packages)
    graph = onnx.load(result.path / "model.onnx").graph
    ops = {node.op_type for node in graph.node}
    assert {"IsNaN", "Where", "LabelEncoder", "ArgMax"} <= ops  # preprocessing is in the graph


def test_regression_outputs(tmp_path):
    single = write_tabular_run(tmp_path / "r1", encoding="onehot", task="regression")
    double = write_tabular_run(tmp_path / "r2", task="regression", num_outputs=2)
    one = export_run(single, tmp_path / "repo", name="one", log_to_mlflow=False)
    two = export_run(double, tmp_path / "repo", name="two", log_to_mlflow=False)
    assert [(s.name, s.shape) for s in one.manifest.outputs] == [("predictions", (-1,))]
    assert [(s.name, s.shape) for s in two.manifest.outputs] == [("predictions", (-1, 2))]
    assert one.manifest.class_labels is None and one.manifest.task == "regression"
    model = load_model(single / "model")
    with torch.no_grad():
        expected = model.predict(expected_network_inputs("onehot")).numpy()
    np.testing.assert_allclose(run_bundle(one.path)["predictions"], expected, atol=1e-4)


def test_versions_are_never_overwritten(tmp_path, tabular_run):
    repo = tmp_path / "repo"
    first = export_run(tabular_run, repo, name="m", log_to_mlflow=False)
    before = (first.path / "model.onnx").read_bytes()
    second = export_run(tabular_run, repo, name="m", log_to_mlflow=False)
    assert (first.path.name, second.path.name) == ("1", "2")
    with pytest.raises(BundleError, match="never overwritten"):
        export_run(tabular_run, repo, name="m", version=1, log_to_mlflow=False)
    assert (first.path / "model.onnx").read_bytes() == before
    chosen = export_run(tabular_run, repo, name="m", version=7, log_to_mlflow=False)
    assert chosen.manifest.version == 7
    assert sorted(p.name for p in (repo / "m").iterdir()) == ["1", "2", "7"]  # no temp left


def test_not_a_run_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="not a finished training run"):
        export_run(tmp_path / "empty", tmp_path / "repo")
    with pytest.raises(BundleError, match="no such run folder"):
        export_run(tmp_path / "missing", tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_preprocessing_that_does_not_fit_the_model(tmp_path):
    run = write_tabular_run(tmp_path / "run", encoding="index")
    prep = json.loads((run / "preprocessing.json").read_text())
    prep["preprocessor"]["options"]["encoding"] = "onehot"  # 15 columns; the model takes 2
    (run / "preprocessing.json").write_text(json.dumps(prep))
    with pytest.raises(BundleError, match="does not fit the run's model"):
        export_run(run, tmp_path / "repo", log_to_mlflow=False)


def test_int8_and_fp16(tmp_path):
    run = write_tabular_run(tmp_path / "run", encoding="onehot", task="multiclass")
    int8 = export_run(run, tmp_path / "repo", quantize="int8", log_to_mlflow=False).manifest
    fp16 = export_run(run, tmp_path / "repo", fp16=True, log_to_mlflow=False).manifest
    assert int8.precision == "int8" and fp16.precision == "fp16"
    # Both conversions are measured against the fp32 graph on the same 66 parity samples.
    # float16 moves this seeded model's probabilities by ~3e-5, far below the gaps between its
    # classes: every decision must survive. int8 weights move them by ~1e-3, which may flip a
    # near tie, so at most 3 of 66 rows (5%) may change class; more means a broken conversion.
    assert fp16.quantization["argmax_agreement"] == 1.0
    assert fp16.quantization["max_abs_diff_vs_fp32"] < 1e-3
    assert int8.quantization["argmax_agreement"] >= 0.95
    assert int8.quantization["max_abs_diff_vs_fp32"] < 0.05
    assert int8.quantization["fp32_parity"]["max_abs_diff"] < 1e-4
    assert int8.parity.tolerance == 0.25 and fp16.parity.tolerance == 0.01
    ops8 = {n.op_type for n in onnx.load(tmp_path / "repo/no-such-data/1/model.onnx").graph.node}
    assert "MatMulInteger" in ops8 or "DynamicQuantizeLinear" in ops8
    graph16 = onnx.load(tmp_path / "repo/no-such-data/2/model.onnx").graph
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph16.initializer)
    assert fp16.inputs[0].datatype == "FP32"  # the interface stays float32


def test_bad_options(tmp_path, tabular_run):
    with pytest.raises(BundleError, match="not both"):
        export_run(tabular_run, tmp_path / "repo", quantize="int8", fp16=True)
    with pytest.raises(BundleError, match="quantize must be"):
        export_run(tabular_run, tmp_path / "repo", quantize="int4")
