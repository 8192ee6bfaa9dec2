"""Detection bundles on a real server: the Open Inference Protocol over REST and gRPC
(tritonclient), request thresholds, the raw head on request, dynamic batching, image uploads in
any size (JSON boxes in the image's pixels, or a rendered PNG), and refusals of bad input.

The bundle is the synthetic model of detection_serve_helpers: its detections are known from the image.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from detection_serve_helpers import (
    LABELS,
    LETTERBOX_SPEC,
    RAW,
    as_input,
    painted,
    raw_head,
    reference_nms,
    write_detection_bundle,
)
from PIL import Image
from serve_helpers import cpu_config, write_convenience_repo
from test_batching import batch_sizes
from tritonclient.utils import InferenceServerException

from mlp_core.image_spec import ImageEvalSpec
from mlp_serve.cli import predict
from mlp_serve.config import BatchingConfig
from mlp_serve.detection import detection_outputs
from mlp_serve.server import BackgroundServer

DETECTION_OUTPUTS = [
    "num_detections",
    "detection_boxes",
    "detection_scores",
    "detection_classes",
    "detection_labels",
]
# Two images: two red cells side by side and a green one; a blue cell and a dim red one.
FIRST = painted({(2, 2): (250, 0, 0), (2, 3): (200, 0, 0), (2, 4): (0, 240, 0)})
SECOND = painted({(5, 1): (0, 0, 230), (7, 7): (50, 0, 0)})
BATCH = np.concatenate([as_input(FIRST), as_input(SECOND)])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    write_detection_bundle(repo)
    write_convenience_repo(repo)  # a tabular "penguins" to send an image to
    with BackgroundServer(repo, cpu_config()) as running:
        yield running


def expected(images: np.ndarray, confidence=0.25, iou=0.7, max_detections=300) -> dict:
    found = reference_nms(raw_head(images), confidence, iou, max_detections)
    return detection_outputs(found, LABELS, clip_to=(64, 64))


def http_address(server: BackgroundServer) -> str:
    return server.http_url.removeprefix("http://")


def grpc_address(server: BackgroundServer) -> str:
    assert server.ports is not None
    return server.ports.grpc_address


def numpy(result, name: str) -> np.ndarray:
    """A tritonclient result's output, which must be there."""
    array = result.as_numpy(name)
    assert array is not None, name
    return array


def assert_outputs(result, want: dict) -> None:
    for name, array in want.items():
        got = numpy(result, name)
        assert got.shape == array.shape, name
        if array.dtype == object:  # JSON answers BYTES as text, binary as bytes
            text = [v.decode() if isinstance(v, bytes) else v for v in got.ravel()]
            assert text == [v.decode() for v in array.ravel()], name
        else:
            np.testing.assert_allclose(got, array, rtol=0, atol=1e-5, err_msg=name)


def http_inputs(images: np.ndarray) -> list:
    tensor = triton_http.InferInput("images", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    return [tensor]


def grpc_inputs(images: np.ndarray) -> list:
    tensor = triton_grpc.InferInput("images", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    return [tensor]


def upload(server, image: Image.Image, fmt: str = "PNG", **params) -> httpx.Response:
    data = io.BytesIO()
    image.save(data, format=fmt)
    files = {"file": (f"x.{fmt.lower()}", data.getvalue(), f"image/{fmt.lower()}")}
    return httpx.post(
        f"{server.http_url}/v1/models/shapes/predict/image", files=files, params=params
    )


# -- metadata ----------------------------------------------------------------------------


def test_metadata_lists_the_detection_outputs_then_the_raw_head(server):
    meta = httpx.get(f"{server.http_url}/v2/models/shapes").json()
    assert [t["name"] for t in meta["inputs"]] == ["images"]
    assert [t["name"] for t in meta["outputs"]] == [*DETECTION_OUTPUTS, RAW]
    datatypes = {t["name"]: (t["datatype"], t["shape"]) for t in meta["outputs"]}
    assert datatypes["num_detections"] == ("INT32", [-1])
    assert datatypes["detection_boxes"] == ("FP32", [-1, -1, 4])
    assert datatypes["detection_labels"] == ("BYTES", [-1, -1])
    assert datatypes[RAW] == ("FP32", [-1, 7, 64])
    params = meta["parameters"]
    assert params["kind"] == "detection"
    assert params["class_labels"] == LABELS
    assert json.loads(params["detection"]) == {
        "confidence": 0.25,
        "iou": 0.7,
        "max_detections": 300,
        "raw_output": RAW,
    }
    assert ImageEvalSpec.model_validate(json.loads(params["preprocessing"])).crop_size == (64, 64)


def ultralytics_view(config: dict) -> dict:
    """What ultralytics' TritonRemoteModel reads from a config (ultralytics/utils/triton.py)."""
    outputs = sorted(config["output"], key=lambda x: x.get("name"))
    return {
        "inputs": [(t["name"], t["data_type"]) for t in config["input"]],
        "outputs": [(t["name"], t["data_type"]) for t in outputs],
        "metadata": ast.literal_eval(
            config.get("parameters", {}).get("metadata", {}).get("string_value", "None")
        ),
    }


def test_config_gives_ultralytics_the_raw_head_and_its_metadata_over_http_and_grpc(server):
    with triton_http.InferenceServerClient(http_address(server)) as client:
        over_http = ultralytics_view(client.get_model_config("shapes"))
    with triton_grpc.InferenceServerClient(grpc_address(server)) as client:
        config = client.get_model_config("shapes", as_json=True)
        assert isinstance(config, dict)
        over_grpc = ultralytics_view(config["config"])
    assert over_http == over_grpc
    # Every output the config lists is fetched and cast to float32, the first is NMSed.
    assert over_http["inputs"] == [("images", "TYPE_FP32")]
    assert over_http["outputs"] == [(RAW, "TYPE_FP32")]
    metadata = over_http["metadata"]
    assert metadata["task"] == "detect"
    assert metadata["names"] == {0: "red", 1: "green", 2: "blue"}
    assert metadata["imgsz"] == [64, 64]
    assert metadata["stride"] == 32 and metadata["batch"] == 1 and metadata["channels"] == 3
    assert metadata["args"]["nms"] is False and metadata["end2end"] is False


# -- inference ---------------------------------------------------------------------------


def test_tritonclient_http_and_grpc_get_the_detections(server):
    want = expected(BATCH)
    assert want["num_detections"].tolist() == [3, 1]  # the dim red cell is under 0.25
    with triton_http.InferenceServerClient(http_address(server)) as client:
        assert_outputs(client.infer("shapes", http_inputs(BATCH)), want)
        # JSON (not binary) outputs too.
        outputs = [triton_http.InferRequestedOutput(n, binary_data=False) for n in want]
        assert_outputs(client.infer("shapes", http_inputs(BATCH), outputs=outputs), want)
    with triton_grpc.InferenceServerClient(grpc_address(server)) as client:
        assert_outputs(client.infer("shapes", grpc_inputs(BATCH)), want)


def test_request_parameters_override_the_thresholds(server):
    lenient = {"confidence": 0.3, "iou": 0.3, "max_detections": 1}
    with triton_http.InferenceServerClient(http_address(server)) as client:
        result = client.infer("shapes", http_inputs(BATCH), parameters=lenient)
    assert_outputs(result, expected(BATCH, 0.3, 0.3, 1))
    assert numpy(result, "num_detections").tolist() == [1, 1]
    with triton_grpc.InferenceServerClient(grpc_address(server)) as client:
        low = client.infer("shapes", grpc_inputs(BATCH), parameters={"confidence": 0.1})
    assert_outputs(low, expected(BATCH, 0.1))
    assert numpy(low, "num_detections").tolist() == [3, 2]  # the dim red cell now


def test_the_raw_head_is_answered_when_asked_for(server):
    with triton_grpc.InferenceServerClient(grpc_address(server)) as client:
        outputs = [triton_grpc.InferRequestedOutput(RAW)]
        result = client.infer("shapes", grpc_inputs(BATCH), outputs=outputs)
    np.testing.assert_allclose(numpy(result, RAW), raw_head(BATCH), atol=1e-6)
    assert result is not None and result.as_numpy("num_detections") is None
    with triton_http.InferenceServerClient(http_address(server)) as client:
        outputs = [triton_http.InferRequestedOutput(n) for n in ("detection_scores", RAW)]
        both = client.infer("shapes", http_inputs(BATCH), outputs=outputs)
    np.testing.assert_allclose(numpy(both, RAW), raw_head(BATCH), atol=1e-6)
    scores = expected(BATCH)["detection_scores"]
    np.testing.assert_allclose(numpy(both, "detection_scores"), scores, atol=1e-5)


def test_concurrent_requests_share_one_run_with_their_own_thresholds(tmp_path):
    write_detection_bundle(tmp_path)
    config = cpu_config(batching=BatchingConfig(max_queue_delay_ms=300))
    confidences = [0.1, 0.25, 0.5, 0.8, 0.9, 0.95]
    with BackgroundServer(tmp_path, config) as server:
        address = grpc_address(server)

        def call(confidence: float):
            with triton_grpc.InferenceServerClient(address) as client:
                params = {"confidence": confidence}
                return client.infer("shapes", grpc_inputs(BATCH), parameters=params)

        with ThreadPoolExecutor(len(confidences)) as pool:
            results = list(pool.map(call, confidences))
        runs, rows = batch_sizes(server.http_url, "shapes")
    for confidence, result in zip(confidences, results):
        assert_outputs(result, expected(BATCH, confidence))
    assert rows == 2 * len(confidences)  # every image once
    assert runs < len(confidences)  # some requests shared an onnxruntime run


# -- image uploads -----------------------------------------------------------------------


def wide_image() -> Image.Image:
    """128 x 64 (w x h): a red 16-pixel square at x 32..48, y 32..48 and a green one at
    x 96..112, y 0..16. Letterboxed at ratio 0.5 with 16 rows of padding above."""
    pixels = np.zeros((64, 128, 3), dtype=np.uint8)
    pixels[32:48, 32:48] = (255, 0, 0)
    pixels[0:16, 96:112] = (0, 255, 0)
    return Image.fromarray(pixels)


def expected_upload(image: Image.Image, confidence: float = 0.25) -> list[dict]:
    spec = ImageEvalSpec.model_validate(LETTERBOX_SPEC)
    letterbox = spec.letterbox(image.height, image.width)
    found = reference_nms(raw_head(spec.apply(image)[None]), confidence, 0.7, 300)[0]
    boxes = letterbox.to_original(found[:, :4])
    return [
        {
            "box": box.tolist(),
            "score": float(row[4]),
            "class_id": int(row[5]),
            "label": LABELS[int(row[5])],
        }
        for box, row in zip(boxes, found)
    ]


def canonical(detections: list[dict]) -> list[dict]:
    """Highest score first; equal scores (ties have no defined order) by class, then box."""
    return sorted(detections, key=lambda d: (-round(d["score"], 6), d["class_id"], d["box"]))


def assert_detections(got: list[dict], want: list[dict]) -> None:
    got, want = canonical(got), canonical(want)
    assert [(d["class_id"], d["label"]) for d in got] == [(d["class_id"], d["label"]) for d in want]
    for mine, theirs in zip(got, want):
        np.testing.assert_allclose(mine["box"], theirs["box"], atol=1e-4)
        assert mine["score"] == pytest.approx(theirs["score"], abs=1e-6)


def test_an_upload_of_any_size_gets_boxes_in_its_own_pixels(server):
    image = wide_image()
    response = upload(server, image)
    assert response.status_code == 200, response.text
    [found] = response.json()["predictions"]
    assert_detections(found, expected_upload(image))
    # The squares where they were drawn, in the 128 x 64 image (cells of 16 pixels there,
    # anchor boxes twice a cell, so 8 pixels beyond each side, clipped to the image).
    by_label = {d["label"]: d["box"] for d in found}
    assert len(found) == 2
    np.testing.assert_allclose(by_label["red"], [24, 24, 56, 56], atol=1e-4)
    np.testing.assert_allclose(by_label["green"], [88, 0, 120, 24], atol=1e-4)


def test_uploads_take_thresholds_and_jpeg_and_batch(server):
    image = wide_image()
    strict = upload(server, image, confidence="0.99", max_detections="1")
    assert strict.status_code == 200, strict.text
    # One box: a best-scoring one (both squares score 1.0 here, and ties have no set order).
    [[kept]] = strict.json()["predictions"]
    candidates = expected_upload(image, 0.99)
    assert kept in candidates and kept["score"] == max(d["score"] for d in candidates)
    jpeg = upload(server, image, fmt="JPEG")
    assert jpeg.status_code == 200, jpeg.text
    assert sorted(d["label"] for d in jpeg.json()["predictions"][0]) == ["green", "red"]
    files = []
    for picture in (image, Image.fromarray(FIRST)):
        data = io.BytesIO()
        picture.save(data, format="PNG")
        files.append(("file", ("x.png", data.getvalue(), "image/png")))
    batch = httpx.post(f"{server.http_url}/v1/models/shapes/predict/image", files=files)
    assert batch.status_code == 200, batch.text
    first, second = batch.json()["predictions"]
    assert_detections(first, expected_upload(image))
    assert_detections(second, expected_upload(Image.fromarray(FIRST)))


def test_render_draws_the_boxes_on_the_image(server):
    image = wide_image()
    response = upload(server, image, render="true")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    drawn = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
    assert drawn.shape == (64, 128, 3)
    # The red square's box (24..56) is outlined in the first class's colour; the middle of the
    # square is untouched.
    assert tuple(drawn[40, 24]) == (255, 56, 56)
    assert tuple(drawn[56, 40]) == (255, 56, 56)
    assert tuple(drawn[40, 40]) == (255, 0, 0)


# -- refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"confidence": "0"}, "parameter 'confidence' must be in (0, 1]"),
        ({"confidence": "1.5"}, "parameter 'confidence' must be in (0, 1]"),
        ({"iou": "x"}, "parameter 'iou': expected a number"),
        ({"max_detections": "0"}, "parameter 'max_detections' must be a whole number >= 1"),
    ],
)
def test_bad_thresholds_on_an_upload_are_400(server, params, message):
    response = upload(server, wide_image(), **params)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_bad_uploads_are_400_naming_the_problem(server):
    url = f"{server.http_url}/v1/models/shapes/predict/image"
    corrupt = httpx.post(url, files={"file": ("x.png", b"\x89PNG not really", "image/png")})
    assert corrupt.status_code == 400
    assert "upload 'x.png' is not a readable JPEG or PNG image" in corrupt.json()["error"]
    data = io.BytesIO()
    wide_image().save(data, format="PNG")
    two = [("file", ("a.png", data.getvalue(), "image/png"))] * 2
    render = httpx.post(url, files=two, params={"render": "true"})
    assert render.status_code == 400
    assert "render=true draws one image; 2 were uploaded" in render.json()["error"]
    tabular = httpx.post(
        f"{server.http_url}/v1/models/penguins/predict/image",
        files={"file": ("a.png", data.getvalue(), "image/png")},
    )
    assert tabular.status_code == 400
    assert "'penguins' is not an image bundle" in tabular.json()["error"]


def test_bad_tensors_and_thresholds_are_invalid_argument(server):
    wrong = np.zeros((1, 3, 32, 32), dtype=np.float32)
    with triton_grpc.InferenceServerClient(grpc_address(server)) as client:
        with pytest.raises(InferenceServerException) as shape:
            client.infer("shapes", grpc_inputs(wrong))
        with pytest.raises(InferenceServerException) as threshold:
            client.infer("shapes", grpc_inputs(BATCH), parameters={"confidence": 2.0})
        with pytest.raises(InferenceServerException) as output:
            client.infer(
                "shapes", grpc_inputs(BATCH), outputs=[triton_grpc.InferRequestedOutput("boxes")]
            )
    assert "INVALID_ARGUMENT" in str(shape.value.status())
    assert "input 'images': shape [1, 3, 32, 32]" in shape.value.message()
    assert "axis 2 must be 64" in shape.value.message()
    assert "INVALID_ARGUMENT" in str(threshold.value.status())
    assert "parameter 'confidence' must be in (0, 1], got 2.0" in threshold.value.message()
    assert "unknown output 'boxes'" in output.value.message()
    body = {
        "parameters": {"max_detections": -1},
        "inputs": [
            {"name": "images", "datatype": "FP32", "shape": [1, 3, 64, 64], "data": [0.0] * 12288}
        ],
    }
    rest = httpx.post(f"{server.http_url}/v2/models/shapes/infer", json=body)
    assert rest.status_code == 400
    assert "parameter 'max_detections' must be a whole number >= 1" in rest.json()["error"]


def test_a_broken_detection_bundle_is_refused_with_the_reason(tmp_path):
    write_detection_bundle(tmp_path, "four", class_labels=["a", "b", "c", "d"])
    write_detection_bundle(
        tmp_path, "squash", preprocessing={**LETTERBOX_SPEC, "resize_mode": "resize_crop"}
    )
    with BackgroundServer(tmp_path, cpu_config()) as server:
        index = httpx.post(f"{server.http_url}/v2/repository/index").json()
    reasons = {row["name"]: row["reason"] for row in index}
    assert (
        "the raw head output0 has 7 channels, but the manifest names 4 classes" in reasons["four"]
    )
    assert "preprocessing must be a letterbox spec, not 'resize_crop'" in reasons["squash"]


# -- mlp predict -------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["rest", "grpc", "local"])
def test_mlp_predict_prints_the_boxes_of_an_image(server, transport, tmp_path, capsys):
    path = tmp_path / "wide.png"
    wide_image().save(path)
    parser = argparse.ArgumentParser()
    predict.configure(parser)
    where = {
        "rest": ["--url", server.http_url],
        "grpc": ["--grpc", grpc_address(server)],
        "local": ["--local", str(server.repository)],  # the in-process Predictor
    }[transport]
    assert predict.run(parser.parse_args(["shapes", "--image", str(path), *where])) == 0
    [found] = json.loads(capsys.readouterr().out)["predictions"]
    assert_detections(found, expected_upload(wide_image()))
