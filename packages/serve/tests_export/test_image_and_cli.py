from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from export_helpers import write_tabular_run

from mlp_core.errors import MissingDependencyError
from mlp_models import create_model, load_model
from mlp_serve.cli import export as export_cli
from mlp_serve.export import export_run

SPEC = {
    "kind": "image", "version": 1, "color_mode": "L", "resize_size": 32,
    "interpolation": "bilinear", "crop_size": [32, 32], "input_dtype": "uint8",
    "scale": 1 / 255, "mean": [0.449], "std": [0.226], "channel_order": ["L"],
    "layout": "CHW", "dtype": "float32",
}  # fmt: skip


def write_image_run(folder: Path) -> Path:
    torch.manual_seed(0)
    model = create_model("mobilenet_v3_small", num_classes=4, in_channels=1, image_size=32)
    folder.mkdir(parents=True)
    model.save(folder / "model")
    (folder / "config.yaml").write_text("data:\n  adapter: image_folder\n  path: shapes\n")
    (folder / "dataset.json").write_text(
        json.dumps({"task": "classification", "class_names": ["a", "b", "c", "d"]})
    )
    (folder / "preprocessing.json").write_text(json.dumps(SPEC))
    return folder


def test_image_bundle(tmp_path):
    run = write_image_run(tmp_path / "run")
    result = export_run(run, tmp_path / "repo", log_to_mlflow=False)
    manifest = result.manifest
    assert manifest.kind == "image" and manifest.preprocessing == SPEC
    assert [(s.name, s.datatype, s.shape) for s in manifest.inputs] == [
        ("image", "FP32", (-1, 1, 32, 32))
    ]
    assert manifest.parity.passed and manifest.parity.max_abs_diff <= 1e-4
    images = np.random.default_rng(1).normal(size=(3, 1, 32, 32)).astype(np.float32)
    session = ort.InferenceSession(
        str(result.path / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    probabilities, labels = session.run(["probabilities", "label"], {"image": images})
    with torch.no_grad():
        expected = load_model(run / "model").predict({"image": torch.from_numpy(images)}).numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)
    assert list(labels) == [["a", "b", "c", "d"][i] for i in expected.argmax(1)]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    export_cli.export_command.configure(parser)
    return parser.parse_args(list(argv))


def test_cli_prints_the_bundle_folder_last(tmp_path, capsys):
    run = write_tabular_run(tmp_path / "run")
    code = export_cli.export_command.run(
        _args(str(run), "--repo", str(tmp_path / "repo"), "--name", "cli", "--version", "3")
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert Path(lines[-1]) == tmp_path / "repo" / "cli" / "3"
    summary = json.loads(lines[0])
    assert summary["parity"]["passed"] is True and summary["version"] == 3
    assert summary["mlflow"]["logged"] is False  # the run has no tracking record


def test_cli_names_the_extra_when_torch_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(export_cli, "_NEEDED", ("torch", "no_such_module_for_mlp_tests"))
    with pytest.raises(MissingDependencyError) as error:
        export_cli.export_command.run(_args(str(tmp_path), "--repo", str(tmp_path / "repo")))
    assert "mlp-serve[export]" in error.value.hint
