"""The in-process Predictor: the server's path without a server, checked against a real one."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from serve_helpers import (
    W,
    cpu_config,
    linear_model,
    write_bundle,
    write_convenience_repo,
)

from mlp_core.errors import ConfigError
from mlp_serve import Predictor
from mlp_serve.errors import InvalidInput, ModelNotFound, ModelUnavailable
from mlp_serve.server import BackgroundServer

ROWS = [
    {"bill": 1.5, "flipper": 2, "island": "b"},
    {"bill": None, "island": "never-seen"},
    {"flipper": 0.5},
]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    write_convenience_repo(root)
    write_bundle(root, "linear", 2, linear_model(w=2 * W))
    return root


@pytest.fixture(scope="module")
def server(repo):
    with BackgroundServer(repo, cpu_config()) as running:
        yield running


@pytest.fixture(scope="module")
def penguins(repo):
    with Predictor.load(repo / "penguins" / "1", config=cpu_config()) as predictor:
        yield predictor


@pytest.fixture(scope="module")
def digits(repo):
    with Predictor.load(repo, name="digits", config=cpu_config()) as predictor:
        yield predictor


def rest_rows(server, rows) -> httpx.Response:
    return httpx.post(f"{server.http_url}/v1/models/penguins/predict", json={"rows": rows})


def png(seed: int, size=(16, 12)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class Frame:
    """What the Predictor uses of a pandas DataFrame (pandas is no dependency of mlp-serve):
    records with numpy scalars and NaN for a missing value, as pandas gives them."""

    def __init__(self, columns: dict[str, list]) -> None:
        self.columns = columns

    def to_dict(self, orient: str) -> list[dict]:
        assert orient == "records"
        count = len(next(iter(self.columns.values())))
        return [{k: v[i] for k, v in self.columns.items()} for i in range(count)]


def test_rows_answer_what_the_rest_endpoint_answers(server, penguins):
    response = rest_rows(server, ROWS)
    assert response.status_code == 200, response.text
    assert penguins.predict(ROWS) == response.json()["predictions"]
    assert penguins.name == "penguins" and penguins.version == 1


def test_a_dataframe_like_object_is_rows_with_nan_missing(server, penguins):
    frame = Frame(
        {
            "bill": [np.float64(1.5), np.nan, np.nan],
            "flipper": [np.int64(2), np.nan, np.float64(0.5)],
            "island": ["b", "never-seen", np.nan],
        }
    )
    assert penguins.predict(frame) == rest_rows(server, ROWS).json()["predictions"]


@pytest.mark.parametrize(
    "rows",
    [[{"bill": "long"}], [{}, {"island": ["a"]}], [{"bil": 1.0}], ["nope"]],
)
def test_bad_rows_raise_the_servers_error(server, penguins, rows):
    response = rest_rows(server, rows)
    assert response.status_code == 400
    with pytest.raises(InvalidInput) as raised:
        penguins.predict(rows)
    assert raised.value.message == response.json()["error"]


def test_images_as_bytes_paths_and_pil_answer_what_the_upload_answers(server, digits, tmp_path):
    first, second = png(1), png(2, (9, 20))
    files = [("file", ("1.png", first, "image/png")), ("file", ("2.png", second, "image/png"))]
    response = httpx.post(f"{server.http_url}/v1/models/digits/predict/image", files=files)
    assert response.status_code == 200, response.text
    expected = response.json()["predictions"]
    path = tmp_path / "second.png"
    path.write_bytes(second)
    assert digits.predict([first, second]) == expected
    assert digits.predict([first, str(path)]) == expected
    assert digits.predict([Image.open(io.BytesIO(first)), path]) == expected
    assert digits.predict(first) == expected[:1]  # one image, not in a list


def test_bad_images_raise_the_servers_error(server, digits, penguins, tmp_path):
    with pytest.raises(InvalidInput, match="not a readable JPEG or PNG"):
        digits.predict([b"not an image"])
    with pytest.raises(InvalidInput, match="cannot be read"):
        digits.predict([tmp_path / "missing.png"])
    with pytest.raises(InvalidInput, match="not an image bundle"):
        penguins.predict(png(3))
    with pytest.raises(InvalidInput, match="row 0: expected an object"):
        penguins.predict([png(3)])  # a list, for a tabular bundle, is rows


def test_tensors_answer_what_v2_infer_answers(server, repo):
    x = np.arange(8, dtype=np.float32).reshape(2, 4) / 3
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": x.ravel().tolist()}]
    }
    response = httpx.post(f"{server.http_url}/v2/models/linear/infer", json=body)
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    with Predictor.load(repo, name="linear", config=cpu_config()) as linear:
        result = linear.predict({"x": x})
        assert set(result) == {"y"}
        assert result["y"].dtype == np.float32 and list(result["y"].shape) == output["shape"]
        np.testing.assert_array_equal(result["y"].ravel(), np.float32(output["data"]))
        # float64, as JSON numbers are, is cast to the input's FP32; a bare array is the input.
        np.testing.assert_array_equal(linear.predict(x.astype(np.float64))["y"], result["y"])
        assert linear.version == 2  # the highest ready version, as the server picks it


def test_tabular_tensors_with_strings(penguins, server):
    numeric = np.array([[1.5, 2.0]], dtype=np.float32)
    categorical = np.array([["b"]])  # str: sent as the protocol's bytes
    result = penguins.predict({"numeric": numeric, "categorical": categorical})
    expected = rest_rows(server, ROWS[:1]).json()["predictions"][0]["probabilities"]
    np.testing.assert_array_equal(result["probabilities"][0], np.float32(list(expected.values())))


def test_bad_tensors_raise_the_servers_error(server, repo, penguins):
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [0.0] * 6}]}
    response = httpx.post(f"{server.http_url}/v2/models/linear/infer", json=body)
    assert response.status_code == 400
    with Predictor.load(repo, name="linear", config=cpu_config()) as linear:
        with pytest.raises(InvalidInput) as raised:
            linear.predict({"x": np.zeros((2, 3), np.float32)})
        assert raised.value.message == response.json()["error"]
        with pytest.raises(InvalidInput, match="unknown input 'z'"):
            linear.predict({"z": np.zeros((1, 4), np.float32)})
        with pytest.raises(InvalidInput, match="input 'x': values of type <U1 are not FP32"):
            linear.predict({"x": np.array([["a", "b", "c", "d"]])})
        with pytest.raises(InvalidInput, match="no feature schema"):
            linear.predict([{"a": 1.0}])
    with pytest.raises(InvalidInput, match="pass rows as a list"):
        penguins.predict({"bill": 1.0, "island": "a"})
    with pytest.raises(InvalidInput, match="cannot predict from int"):
        penguins.predict(3)
    with pytest.raises(InvalidInput, match="the list is empty"):
        penguins.predict([])


def test_repository_loading_pins_or_picks_versions(repo, tmp_path):
    with Predictor.load(repo, name="linear", version=1, config=cpu_config()) as first:
        assert first.version == 1
        np.testing.assert_allclose(
            first.predict({"x": np.ones((1, 4), np.float32)})["y"][0],
            np.ones(4, np.float32) @ W + first.predict({"x": np.zeros((1, 4), np.float32)})["y"][0],
            rtol=1e-5,
        )
    # A bundle folder loads that version alone, even where a higher one sits beside it.
    with Predictor.load(repo / "linear" / "1", config=cpu_config()) as bundle:
        assert (bundle.name, bundle.version) == ("linear", 1)
    with pytest.raises(ModelNotFound, match="no ready version '7'"):
        Predictor.load(repo, name="linear", version=7, config=cpu_config())
    with pytest.raises(ModelUnavailable):
        Predictor.load(repo, name="nothing", config=cpu_config())
    with pytest.raises(ConfigError, match="version= goes with"):
        Predictor.load(repo / "linear" / "1", version=1)


def test_a_broken_bundle_raises_the_reason_and_closing_is_final(tmp_path):
    write_bundle(tmp_path, "bad", 1, linear_model(), sha256="0" * 64)
    with pytest.raises(ModelUnavailable, match="does not match the manifest"):
        Predictor.load(tmp_path / "bad" / "1", config=cpu_config())
    write_bundle(tmp_path, "good", 3, linear_model())
    predictor = Predictor.load(tmp_path / "good" / "3", config=cpu_config())
    assert predictor.version == 3
    scratch = predictor._dataplane.repository.root  # the bundle's own one-version repository
    assert (scratch / "good" / "3" / "model.onnx").is_file()
    predictor.close()
    assert not scratch.exists() and (tmp_path / "good" / "3" / "model.onnx").is_file()
    predictor.close()
    with pytest.raises(ModelUnavailable, match="closed"):
        predictor.predict({"x": np.zeros((1, 4), np.float32)})


def test_predictor_is_lazy_until_load():
    code = (
        "import sys, mlp_serve\n"
        "cls = mlp_serve.Predictor\n"
        "from mlp_serve import Predictor\n"
        "assert cls is Predictor\n"
        "heavy = [m for m in ('onnxruntime', 'fastapi', 'grpc') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_batching_on_answers_threads_as_alone(repo):
    from concurrent.futures import ThreadPoolExecutor

    from mlp_serve.config import BatchingConfig

    inputs = [np.full((1 + i % 3, 4), i, np.float32) for i in range(24)]
    with Predictor.load(repo, name="linear", config=cpu_config()) as alone:
        expected = [alone.predict({"x": x})["y"] for x in inputs]
    config = cpu_config(batching=BatchingConfig(max_queue_delay_ms=2.0))
    with Predictor.load(repo, name="linear", config=config) as batched:
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda x: batched.predict({"x": x})["y"], inputs))
        registry = batched._dataplane.registry
        assert registry is not None
        labels = {"model": "linear", "version": "2"}
        rows = registry.get_sample_value("mlp_inference_batch_size_sum", labels)
        requests = registry.get_sample_value(
            "mlp_inference_requests_total", {**labels, "protocol": "python", "status": "ok"}
        )
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)
    # Every row went through the batcher's runs, each request counted under the Predictor's label.
    assert rows == sum(len(x) for x in inputs)
    assert requests == len(inputs)
