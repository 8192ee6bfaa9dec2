"""Penguins end to end: a trained run, exported, served; raw rows answered as the run answers.

The reference is the trained pipeline in this process: mlp-data's preprocessing, fitted again
from the run's config.yaml, then the trained torch model. The server is reached the ways a
user reaches it: REST rows, ``tritonclient`` over HTTP (JSON and binary) and gRPC, and the
``mlp predict`` command.
"""

from __future__ import annotations

import json
import math
import subprocess

import httpx
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml

from mlp_data import create_adapter
from mlp_models import load_model
from mlp_serve.config import ServeConfig
from mlp_serve.export import export_run
from mlp_serve.server import BackgroundServer

MODEL = "penguins"
# Raw rows as a person sends them: a key left out is a missing value, as is null.
ROWS = [
    {
        "island": "Torgersen",
        "bill_length_mm": 39.1,
        "bill_depth_mm": 18.7,
        "flipper_length_mm": 181,
        "body_mass_g": 3750,
        "sex": "male",
        "year": 2007,
    },
    {  # a missing number (null) and one left out
        "island": "Biscoe",
        "bill_length_mm": None,
        "bill_depth_mm": 15.0,
        "flipper_length_mm": 217,
        "sex": "female",
        "year": 2008,
    },
    {  # an island the training data never held, and no sex
        "island": "Atlantis",
        "bill_length_mm": 49.5,
        "bill_depth_mm": 19.0,
        "flipper_length_mm": 200,
        "body_mass_g": 3800,
        "sex": None,
        "year": 2009,
    },
    {
        "island": "Dream",
        "bill_length_mm": 50.8,
        "bill_depth_mm": 19.0,
        "flipper_length_mm": 210,
        "body_mass_g": 4100,
        "sex": "male",
        "year": 2009,
    },
]


@pytest.fixture(scope="module")
def bundle(penguins_run, in_root, tmp_path_factory):
    with in_root():  # the exporter re-reads the run's (relative) data file for its checks
        return export_run(
            penguins_run, tmp_path_factory.mktemp("repo"), name=MODEL, log_to_mlflow=False
        )


@pytest.fixture(scope="module")
def server(bundle):
    config = ServeConfig(
        http_port=0, grpc_port=0, poll_seconds=None, providers=["CPUExecutionProvider"]
    )
    with BackgroundServer(bundle.path.parents[1], config) as running:
        yield running


@pytest.fixture(scope="module")
def preprocessor(penguins_run, in_root):
    """mlp-data's preprocessing, fitted again from the run's config.yaml."""
    config = yaml.safe_load((penguins_run / "config.yaml").read_text())
    with in_root():
        return create_adapter(config["data"]).prepare().preprocessor


@pytest.fixture(scope="module")
def expected(penguins_run, preprocessor) -> np.ndarray:
    """The trained pipeline on ROWS: mlp-data's fitted preprocessing, then the torch model."""
    columns = preprocessor.numeric_names + preprocessor.categorical_names
    arrays = preprocessor.transform(pd.DataFrame(ROWS, columns=columns))
    model = load_model(penguins_run / "model")
    return model.predict({k: torch.from_numpy(v) for k, v in arrays.items()}).numpy()


def feeds(manifest) -> dict[str, np.ndarray]:
    """ROWS as the bundle's raw inputs: NaN for a missing number, "" for a missing category."""
    schema = manifest.feature_schema
    numeric = [[_number(row.get(c)) for c in schema.numeric] for row in ROWS]
    categorical = [[row.get(c) or "" for c in schema.categorical] for row in ROWS]
    return {
        "numeric": np.asarray(numeric, dtype=np.float32),
        "categorical": np.asarray(categorical, dtype=object),
    }


def _number(value) -> float:
    return math.nan if value is None else float(value)


@pytest.fixture(scope="module")
def onnx_outputs(bundle) -> tuple[np.ndarray, list[str]]:
    session = ort.InferenceSession(
        str(bundle.path / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    probabilities, labels = session.run(["probabilities", "label"], feeds(bundle.manifest))
    return probabilities, [_text(v) for v in labels.reshape(-1)]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def as_arrays(predictions: list[dict], labels: list[str]) -> tuple[np.ndarray, list[str]]:
    probabilities = [[p["probabilities"][name] for name in labels] for p in predictions]
    return np.asarray(probabilities), [p["label"] for p in predictions]


def test_the_reference_is_the_runs_pipeline(penguins_run, preprocessor, bundle, expected):
    saved = json.loads((penguins_run / "preprocessing.json").read_text())
    assert preprocessor.to_dict() == saved["preprocessor"]  # the same fit as in training
    schema = bundle.manifest.feature_schema
    assert schema.numeric == preprocessor.numeric_names
    assert "Atlantis" not in schema.categories["island"]
    values = feeds(bundle.manifest)
    assert np.isnan(values["numeric"][1]).sum() == 2
    assert values["categorical"][2].tolist() == ["Atlantis", ""]
    assert expected.shape == (len(ROWS), 3)
    np.testing.assert_allclose(expected.sum(axis=1), 1.0, atol=1e-5)


def test_rest_rows_answer_as_the_trained_pipeline(server, bundle, expected, onnx_outputs):
    labels = bundle.manifest.class_labels
    reply = httpx.post(f"{server.http_url}/v1/models/{MODEL}/predict", json={"rows": ROWS})
    assert reply.status_code == 200, reply.text
    probabilities, answered = as_arrays(reply.json()["predictions"], labels)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert answered == [labels[i] for i in expected.argmax(axis=1)]
    np.testing.assert_allclose(probabilities, onnx_outputs[0], atol=1e-6)
    assert answered == onnx_outputs[1]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_http(server, bundle, expected, onnx_outputs, binary):
    values = feeds(bundle.manifest)
    inputs = []
    for name, datatype in (("numeric", "FP32"), ("categorical", "BYTES")):
        tensor = httpclient.InferInput(name, list(values[name].shape), datatype)
        tensor.set_data_from_numpy(values[name], binary_data=binary)
        inputs.append(tensor)
    outputs = [
        httpclient.InferRequestedOutput(name, binary_data=binary)
        for name in ("probabilities", "label")
    ]
    client = httpclient.InferenceServerClient(url=server.http_url.removeprefix("http://"))
    try:
        result = client.infer(MODEL, inputs, outputs=outputs)
    finally:
        client.close()
    probabilities = result.as_numpy("probabilities")
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    np.testing.assert_allclose(probabilities, onnx_outputs[0], atol=1e-6)
    assert [_text(v) for v in result.as_numpy("label").reshape(-1)] == onnx_outputs[1]


def test_tritonclient_grpc(server, bundle, expected, onnx_outputs):
    values = feeds(bundle.manifest)
    inputs = []
    for name, datatype in (("numeric", "FP32"), ("categorical", "BYTES")):
        tensor = grpcclient.InferInput(name, list(values[name].shape), datatype)
        tensor.set_data_from_numpy(values[name])
        inputs.append(tensor)
    outputs = [grpcclient.InferRequestedOutput(n) for n in ("probabilities", "label")]
    client = grpcclient.InferenceServerClient(url=server.ports.grpc_address)
    try:
        assert client.is_model_ready(MODEL)
        result = client.infer(MODEL, inputs, outputs=outputs)
    finally:
        client.close()
    probabilities = result.as_numpy("probabilities")
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    np.testing.assert_allclose(probabilities, onnx_outputs[0], atol=1e-6)
    assert [_text(v) for v in result.as_numpy("label").reshape(-1)] == onnx_outputs[1]


@pytest.mark.parametrize("front", ["rest", "grpc"])
def test_mlp_predict(server, bundle, bin_dir, expected, onnx_outputs, front):
    where = ["--url", server.http_url] if front == "rest" else ["--grpc", server.ports.grpc_address]
    proc = subprocess.run(
        [str(bin_dir / "mlp"), "predict", MODEL, "--json", json.dumps(ROWS), *where],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    labels = bundle.manifest.class_labels
    probabilities, answered = as_arrays(json.loads(proc.stdout)["predictions"], labels)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    np.testing.assert_allclose(probabilities, onnx_outputs[0], atol=1e-6)
    assert answered == onnx_outputs[1] == [labels[i] for i in expected.argmax(axis=1)]
