from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import mlp_models.registry as registry_module
from mlp_core.errors import ConfigError, ModelError, RegistryError
from mlp_core.registry import Registry
from mlp_models import (
    BaseModel,
    InputSpec,
    TensorSpec,
    accepted_arguments,
    create_model,
    list_models,
    load_model,
    register_model,
    vision,
)


def test_an_unknown_name_suggests_the_closest():
    with pytest.raises(RegistryError) as info:
        create_model("resnet19", num_classes=3)
    assert "unknown model 'resnet19'" in info.value.message
    assert "Did you mean 'resnet18'" in info.value.message


def test_an_unknown_argument_names_the_model_and_what_it_accepts():
    with pytest.raises(ConfigError) as info:
        create_model("resnet18", num_classes=3, num_class=3)
    message = info.value.message
    assert "model 'resnet18' does not accept 'num_class'" in message
    assert (
        "accepted arguments: num_classes, in_channels, image_size, pretrained_weights, "
        "freeze_backbone" in message
    )
    assert "'num_class' -> 'num_classes'" in message


def test_a_missing_required_argument_is_named():
    with pytest.raises(ConfigError, match="model 'tabular_mlp' needs 'num_numeric'"):
        create_model("tabular_mlp", num_classes=2)


def test_accepted_arguments_come_from_the_signature():
    assert accepted_arguments("tabular_mlp")[:3] == [
        "num_numeric",
        "categorical_cardinalities",
        "task",
    ]
    assert "backbone" not in accepted_arguments("resnet50")


class _Linear(BaseModel):
    """A minimal model from 'another package', as the README tells one to write it."""

    def __init__(self, *, width: int = 3) -> None:
        super().__init__()
        self.task = "regression"
        self.width = width
        self.layer = nn.Linear(width, 1)

    @property
    def model_name(self) -> str:
        return "plugin_linear"

    def get_config(self) -> dict:
        return {"width": self.width}

    def input_spec(self) -> InputSpec:
        return InputSpec(
            inputs=(TensorSpec("numeric", "float32", (-1, self.width)),),
            outputs=(TensorSpec("predictions", "float32", (-1, 1)),),
        )

    def forward(self, numeric: Tensor) -> Tensor:
        return self.layer(numeric)


@pytest.fixture
def fresh_registry(monkeypatch):
    # A registry of its own, so registering test models leaves the real one untouched; it
    # still sees this package's entry points.
    fresh = Registry("model", group="mlp.models")
    monkeypatch.setattr(registry_module, "models", fresh)
    return fresh


def test_a_registered_model_is_created_saved_and_loaded_by_name(fresh_registry, tmp_path):
    register_model("plugin_linear")(_Linear)
    assert "plugin_linear" in list_models()
    model = create_model("plugin_linear", width=4)
    assert model.predict({"numeric": torch.ones(2, 4)}).shape == (2,)
    loaded = load_model(model.save(tmp_path / "plugin.pt"))
    assert isinstance(loaded, _Linear) and loaded.width == 4
    assert torch.equal(loaded.layer.weight, model.layer.weight)


def test_the_built_in_models_are_also_found_through_entry_points(fresh_registry):
    # Nothing is registered in the fresh registry: these names come from pyproject.toml.
    assert {"tabular_mlp", "resnet18", "mobilenet_v3_large"} <= set(fresh_registry.names())
    assert fresh_registry.get("resnet18") is vision.resnet18


def test_a_factory_that_builds_something_else_is_a_model_error(fresh_registry):
    register_model("not_a_model")(lambda: nn.Linear(2, 2))
    with pytest.raises(ModelError, match="built a Linear, not an mlp_models.BaseModel"):
        create_model("not_a_model")
