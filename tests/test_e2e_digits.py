"""Digits end to end: a trained image run, exported, served; an uploaded PNG answered as the
trained model answers it after mlp-data's evaluation transform."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from sklearn.datasets import load_digits

from mlp_core.image_spec import ImageEvalSpec
from mlp_data import create_adapter
from mlp_models import load_model
from mlp_serve.config import ServeConfig
from mlp_serve.export import export_run
from mlp_serve.server import BackgroundServer

MODEL = "digits"


@pytest.fixture(scope="module")
def bundle(digits_run, tmp_path_factory):
    return export_run(digits_run, tmp_path_factory.mktemp("repo"), name=MODEL)


@pytest.fixture(scope="module")
def server(bundle):
    config = ServeConfig(
        http_port=0, grpc_port=0, poll_seconds=None, providers=["CPUExecutionProvider"]
    )
    with BackgroundServer(bundle.path.parents[1], config) as running:
        yield running


@pytest.fixture(scope="module")
def pngs(digits_run, tmp_path_factory) -> list[Path]:
    """Two PNGs from the run's own data, and one it never saw: a larger RGB digit, which the
    evaluation transform must convert to grey and resize."""
    data = Path(yaml.safe_load((digits_run / "config.yaml").read_text())["data"]["path"])
    files = [data / "3" / "0003.png", data / "7" / "0017.png"]
    digits = load_digits()
    pixels = np.rint(digits.images[-1] * (255 / 16)).astype(np.uint8)
    unseen = tmp_path_factory.mktemp("upload") / f"digit-{digits.target[-1]}.png"
    Image.fromarray(pixels, mode="L").convert("RGB").resize((40, 48)).save(unseen)
    return [*files, unseen]


@pytest.fixture(scope="module")
def expected(digits_run, pngs) -> np.ndarray:
    """The trained model on mlp-data's evaluation transform (torchvision) of each PNG."""
    config = yaml.safe_load((digits_run / "config.yaml").read_text())
    transform = create_adapter(config["data"]).preprocessor.eval_transform
    pixels = torch.stack([transform(Image.open(path)) for path in pngs])
    return load_model(digits_run / "model").predict({"image": pixels}).numpy()


def as_arrays(predictions: list[dict], labels: list[str]) -> tuple[np.ndarray, list[str]]:
    probabilities = [[p["probabilities"][name] for name in labels] for p in predictions]
    return np.asarray(probabilities), [p["label"] for p in predictions]


def test_the_spec_replays_the_eval_transform(digits_run, bundle, pngs):
    # The bundle carries the run's spec, and mlp-data's reference of it (Pillow + numpy, what
    # the server does) gives the torchvision transform's pixels.
    spec = json.loads((digits_run / "preprocessing.json").read_text())
    assert bundle.manifest.preprocessing == spec
    config = yaml.safe_load((digits_run / "config.yaml").read_text())
    transform = create_adapter(config["data"]).preprocessor.eval_transform
    for path in pngs:
        reference = transform(Image.open(path)).numpy()
        assert reference.shape == (1, 32, 32)
        np.testing.assert_allclose(
            ImageEvalSpec.parse(spec).apply(Image.open(path)), reference, atol=1e-6
        )


def test_uploaded_pngs_answer_as_the_trained_model(server, bundle, pngs, expected):
    labels = bundle.manifest.class_labels
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in pngs]
    reply = httpx.post(f"{server.http_url}/v1/models/{MODEL}/predict/image", files=files)
    assert reply.status_code == 200, reply.text
    probabilities, answered = as_arrays(reply.json()["predictions"], labels)
    assert probabilities.shape == (len(pngs), 10)
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)
    assert answered == [labels[i] for i in expected.argmax(axis=1)]

    one = httpx.post(
        f"{server.http_url}/v1/models/{MODEL}/predict/image",
        files={"file": (pngs[-1].name, pngs[-1].read_bytes(), "image/png")},
    )
    assert one.status_code == 200, one.text
    alone, _ = as_arrays(one.json()["predictions"], labels)
    np.testing.assert_allclose(alone[0], expected[-1], atol=1e-4)


def test_mlp_predict_image_over_grpc(server, bundle, bin_dir, pngs, expected):
    labels = bundle.manifest.class_labels
    command = [str(bin_dir / "mlp"), "predict", MODEL, "--image", str(pngs[-1])]
    proc = subprocess.run(
        [*command, "--grpc", server.ports.grpc_address],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    probabilities, answered = as_arrays(json.loads(proc.stdout)["predictions"], labels)
    assert answered == [labels[int(expected[-1].argmax())]]
    np.testing.assert_allclose(probabilities[0], expected[-1], atol=1e-4)
