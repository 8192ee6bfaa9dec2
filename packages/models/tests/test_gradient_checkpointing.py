from __future__ import annotations

import pytest
import torch
from model_helpers import make_batch, tiny_model
from torch import nn

from mlp_core.errors import ModelError


def _train_step(model, batch):
    model.train()
    torch.manual_seed(3)  # the same dropout / stochastic depth draws for both models
    result = model.training_step(batch)
    result.loss.backward()
    return result.outputs, {name: p.grad for name, p in model.named_parameters()}


def _count_calls_of_first_conv(stage: nn.Module) -> list[int]:
    # A conv inside the stage, not the stage itself: checkpoint's recomputation stops as soon
    # as it has what backward needs, before the stage's own forward hooks would run.
    calls: list[int] = []
    first_conv = next(m for m in stage.modules() if isinstance(m, nn.Conv2d))
    first_conv.register_forward_hook(lambda *_: calls.append(1))
    return calls


# One of each layout: ResNet stages (layer1..4) and features blocks (MobileNet, EfficientNet).
@pytest.mark.parametrize(
    ("name", "stage"), [("resnet18", "layer1"), ("mobilenet_v3_small", "features.1")]
)
def test_checkpointing_recomputes_stages_with_the_same_outputs_and_gradients(name, stage):
    plain, checkpointed = tiny_model(name), tiny_model(name)
    assert checkpointed.supports_gradient_checkpointing
    checkpointed.set_gradient_checkpointing(True)
    batch = make_batch(plain)

    calls = _count_calls_of_first_conv(checkpointed.network.get_submodule(stage))
    plain_out, plain_grads = _train_step(plain, batch)
    ckpt_out, ckpt_grads = _train_step(checkpointed, batch)

    # Run once forward and once more in backward: the activations were not kept.
    assert len(calls) == 2
    assert torch.allclose(plain_out, ckpt_out, atol=1e-6)
    assert plain_grads.keys() == ckpt_grads.keys()
    for key, grad in plain_grads.items():
        assert torch.allclose(grad, ckpt_grads[key], atol=1e-5), key


def test_checkpointing_is_skipped_without_gradients():
    model = tiny_model("resnet18")
    model.set_gradient_checkpointing(True)
    calls = _count_calls_of_first_conv(model.network.layer1)
    with torch.no_grad():
        model(model.example_inputs(2)[0])
    assert len(calls) == 1


def test_the_mlp_refuses_gradient_checkpointing():
    model = tiny_model("tabular_mlp")
    assert not model.supports_gradient_checkpointing
    with pytest.raises(ModelError, match="does not support gradient checkpointing"):
        model.set_gradient_checkpointing(True)
    model.set_gradient_checkpointing(False)  # turning it off is always fine
    assert not model.gradient_checkpointing
