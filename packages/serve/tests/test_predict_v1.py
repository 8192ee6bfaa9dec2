"""The people-facing endpoints: JSON rows for tabular bundles, image uploads for image ones."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image
from serve_helpers import (
    IMAGE_SPEC as SPEC,
)
from serve_helpers import (
    PENGUIN_LABELS as LABELS,
)
from serve_helpers import (
    cpu_config,
    softmax,
    write_convenience_repo,
)

from mlp_serve.server import BackgroundServer


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    write_convenience_repo(repo)
    with BackgroundServer(repo, cpu_config()) as running:
        yield running


def predict(server, rows):
    return httpx.post(f"{server.http_url}/v1/models/penguins/predict", json={"rows": rows})


def test_rows_map_to_numeric_and_categorical_inputs(server):
    rows = [
        {"bill": 1.5, "flipper": 2, "island": "b"},
        {"bill": None, "island": "never-seen"},  # null and a missing key: NaN; unseen category
        {"flipper": 0.5},  # missing category: ""
    ]
    response = predict(server, rows)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    # The model's logits are (bill or -1, flipper or -1, island a=0 b=1 else 5).
    logits = np.array([[1.5, 2, 1], [-1, -1, 5], [-1, 0.5, 5]], dtype=np.float32)
    for prediction, want in zip(predictions, softmax(logits)):
        got = [prediction["probabilities"][label] for label in LABELS]
        np.testing.assert_allclose(got, want, rtol=1e-5)
        assert prediction["label"] == LABELS[int(want.argmax())]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"bill": "long"}], "row 0, column 'bill': expected a number or null, got 'long'"),
        ([{}, {"island": ["a"]}], "row 1, column 'island': expected a string"),
        ([{"bil": 1.0}], "unknown column(s) 'bil'"),
        ([], "at least one row"),
        ("nope", "at least one row"),
        (["nope"], "row 0: expected an object"),
    ],
)
def test_bad_rows_are_400_naming_row_and_column(server, rows, message):
    response = predict(server, rows)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_rows_need_a_feature_schema(server):
    response = httpx.post(f"{server.http_url}/v1/models/linear/predict", json={"rows": [{}]})
    assert response.status_code == 400
    assert "no feature schema" in response.json()["error"]


def by_hand(image: Image.Image) -> np.ndarray:
    """SPEC applied step by step: shorter side to 10, centre crop 8, scale, normalise, CHW."""
    width, height = image.size
    new_w, new_h = (
        (10, int(10 * height / width)) if width <= height else (int(10 * width / height), 10)
    )
    pixels = np.asarray(image.convert("RGB").resize((new_w, new_h), Image.Resampling.BILINEAR))
    top, left = round((new_h - 8) / 2), round((new_w - 8) / 2)
    crop = pixels[top : top + 8, left : left + 8].astype(np.float32) * np.float32(1 / 255)
    normalised = (crop - np.float32(SPEC["mean"])) / np.float32(SPEC["std"])
    return normalised.transpose(2, 0, 1)


def png(seed: int, size=(16, 12)) -> tuple[bytes, Image.Image]:
    pixels = np.random.default_rng(seed).integers(
        0, 256, size=(size[1], size[0], 3), dtype=np.uint8
    )
    image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), image


def test_image_upload_matches_the_spec_applied_by_hand(server):
    files = []
    expected = []
    for seed, size in ((1, (16, 12)), (2, (9, 20))):
        data, image = png(seed, size)
        files.append(("file", (f"{seed}.png", data, "image/png")))
        expected.append(softmax(by_hand(image).mean(axis=(1, 2))))
    response = httpx.post(f"{server.http_url}/v1/models/digits/predict/image", files=files)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 2
    for prediction, want in zip(predictions, expected):
        got = [prediction["probabilities"][c] for c in ("r", "g", "b")]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert prediction["label"] == "rgb"[int(np.argmax(want))]


def test_image_upload_errors(server):
    url = f"{server.http_url}/v1/models/digits/predict/image"
    not_image = httpx.post(url, files={"file": ("x.png", b"not an image", "image/png")})
    assert not_image.status_code == 400
    assert "not a readable JPEG or PNG" in not_image.json()["error"]
    no_file = httpx.post(url, files={"other": ("x.png", png(3)[0], "image/png")})
    assert no_file.status_code == 400
    assert "'file'" in no_file.json()["error"]
    not_image_model = httpx.post(
        f"{server.http_url}/v1/models/linear/predict/image", files={"file": ("a.png", png(4)[0])}
    )
    assert not_image_model.status_code == 400
    ok = httpx.post(url, files={"file": ("a.png", png(5)[0], "image/png")})
    assert ok.status_code == 200
