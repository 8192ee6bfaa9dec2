"""Every registered model, built-in or installed, goes through the same checks."""

from __future__ import annotations

import pytest
import torch
from model_helpers import make_batch, tiny_model

from mlp_models import BaseModel, list_models, load_model, read_model_file
from mlp_models.dtypes import torch_dtype

# Detection models train on boxes, not targets, and answer a raw head, not class scores:
# test_yolo.py puts them through the same steps (loss with gradients, save and rebuild, the
# signature) in their own terms.
DETECTION_MODELS = {"yolo"}
ALL_MODELS = [name for name in list_models() if name not in DETECTION_MODELS]


def test_the_built_in_models_are_registered():
    expected = {
        "tabular_mlp",
        "resnet18",
        "resnet34",
        "resnet50",
        "efficientnet_b0",
        "mobilenet_v3_small",
        "mobilenet_v3_large",
    }
    assert expected <= set(ALL_MODELS)
    assert set(list_models()) >= DETECTION_MODELS


@pytest.mark.parametrize("name", ALL_MODELS)
def test_train_step_backward_and_save_load_round_trip(name, tmp_path):
    model = tiny_model(name)
    assert isinstance(model, BaseModel)
    assert model.model_name == name
    batch = make_batch(model)

    model.train()
    result = model.training_step(batch)
    assert result.loss.dim() == 0 and torch.isfinite(result.loss)
    assert not result.outputs.requires_grad
    assert torch.equal(result.targets, batch["target"])
    result.loss.backward()
    # The first and the last parameter: gradients reach through the whole network.
    parameters = [p for p in model.parameters() if p.requires_grad]
    for parameter in (parameters[0], parameters[-1]):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0

    model.eval()
    inputs = model.inputs_from_batch(batch)
    with torch.no_grad():
        before = model(*inputs)
    path = model.save(tmp_path / f"{name}.pt")
    loaded = load_model(path)
    assert type(loaded) is type(model)
    assert loaded.get_config() == model.get_config()
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(*inputs), before)
    assert read_model_file(path).name == name


@pytest.mark.parametrize("name", ALL_MODELS)
def test_validation_predict_and_signature(name):
    model = tiny_model(name)
    batch = make_batch(model, batch_size=3)
    model.train()
    result = model.validation_step(batch)
    assert not result.loss.requires_grad
    assert result.outputs.shape[0] == 3

    predictions = model.predict({k: v for k, v in batch.items() if k != "target"})
    assert model.training, "predict() restores the train/eval mode it found"
    if model.task == "regression":
        assert predictions.shape[0] == 3
    else:
        assert predictions.shape == (3, model.signature().outputs[0].shape[1])
        assert torch.allclose(predictions.sum(dim=1), torch.ones(3))
        assert (predictions >= 0).all()

    spec = model.signature()
    examples = model.example_inputs(batch_size=3)
    assert [tuple(t.shape) for t in examples] == [s.concrete_shape(3) for s in spec.inputs]
    assert [t.dtype for t in examples] == [torch_dtype(s) for s in spec.inputs]
    assert all(s.shape[0] == -1 for s in (*spec.inputs, *spec.outputs))
    assert spec.dynamic_axes == {s.name: {0: "batch"} for s in (*spec.inputs, *spec.outputs)}
    with torch.no_grad():
        outputs = model.eval()(*examples)
    assert tuple(outputs.shape) == spec.outputs[0].concrete_shape(3)
    assert outputs.dtype == torch_dtype(spec.outputs[0])


# One model per layout (MLP, ResNet, features + classifier): exporting is slow on a CPU.
@pytest.mark.parametrize("name", ["tabular_mlp", "resnet18", "mobilenet_v3_small"])
def test_example_inputs_export_with_a_dynamic_batch_axis(name):
    model = tiny_model(name).eval()
    examples = model.example_inputs(batch_size=3)
    # What an ONNX exporter does: trace at one batch size with the batch axis marked dynamic,
    # then the traced program must run at another.
    batch = torch.export.Dim("batch")
    exported = torch.export.export(
        model, examples, dynamic_shapes=tuple({0: batch} for _ in examples)
    )
    other = model.example_inputs(batch_size=5)
    with torch.no_grad():
        assert torch.allclose(exported.module()(*other), model(*other), atol=1e-5)
