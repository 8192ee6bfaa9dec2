"""`mlp export` on a real digits run: the bundle on eval-spec pixels answers as torch does."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image

from mlp_core.image_spec import ImageEvalSpec
from mlp_models import load_model
from mlp_serve.export import export_run


def test_image_bundle_matches_torch_on_eval_spec_pixels(digits_run, tmp_path):
    result = export_run(digits_run, tmp_path / "repo")
    manifest = result.manifest
    spec = json.loads((digits_run / "preprocessing.json").read_text())
    assert manifest.kind == "image" and manifest.preprocessing == spec
    assert manifest.class_labels == [str(d) for d in range(10)]
    assert [(s.name, s.datatype, s.shape) for s in manifest.inputs] == [
        ("image", "FP32", (-1, 1, 32, 32))
    ]
    assert manifest.parity.passed and manifest.parity.max_abs_diff <= 1e-4
    assert result.mlflow == {"logged": False, "reason": "the run has no MLflow tracking record"}

    files = sorted((Path(manifest.training["data"]["path"])).rglob("*.png"))[::12]
    assert len(files) >= 7
    pixels = np.stack([ImageEvalSpec.parse(spec).apply(Image.open(f)) for f in files])
    session = ort.InferenceSession(
        str(result.path / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    probabilities, labels = session.run(["probabilities", "label"], {"image": pixels})
    with torch.no_grad():
        expected = load_model(digits_run / "model").predict({"image": torch.from_numpy(pixels)})
    np.testing.assert_allclose(probabilities, expected.numpy(), atol=1e-4)
    assert list(labels) == [manifest.class_labels[i] for i in expected.numpy().argmax(1)]
    one = session.run(["probabilities"], {"image": pixels[:1]})[0]
    np.testing.assert_allclose(one[0], probabilities[0], atol=1e-5)
    assert os.access(result.path / "manifest.json", os.R_OK)
