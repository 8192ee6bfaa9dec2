from __future__ import annotations

import sys
import textwrap
from importlib.metadata import entry_points

import pytest
import torch
from torch import Tensor, nn

import mlp_models.registry as registry_module
from mlp_core.errors import ConfigError, ModelError, RegistryError
from mlp_core.registry import Registry
from mlp_core.tensors import ModelSignature, TensorSpec
from mlp_models import (
    BaseModel,
    TabularModel,
    accepted_arguments,
    create_model,
    list_models,
    load_model,
    register_model,
    vision,
)
from mlp_models.registry import PLUGIN_GROUP, PluginImportWarning


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

    def signature(self) -> ModelSignature:
        return ModelSignature(
            inputs=(TensorSpec(name="numeric", datatype="FP32", shape=(-1, self.width)),),
            outputs=(TensorSpec(name="predictions", datatype="FP32", shape=(-1, 1)),),
        )

    def forward(self, numeric: Tensor) -> Tensor:
        return self.layer(numeric)


@pytest.fixture
def fresh_registry(monkeypatch):
    # A registry of its own, so registering test models leaves the real one untouched.
    fresh = Registry("model")
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


def test_each_built_in_model_is_registered_once_under_its_function_name():
    # The entry points are for other distributions: mlp-models declares its models only with
    # their decorators, and importing the package registers them.
    assert not [
        e for e in entry_points(group=PLUGIN_GROUP) if e.dist and e.dist.name == "mlp-models"
    ]
    assert registry_module.models.get("resnet18") is vision.resnet18
    assert set(vision.BACKBONES) <= set(list_models())
    assert "tabular_mlp" in list_models()


@pytest.fixture
def plugin_dist(tmp_path, monkeypatch, fresh_registry):
    """An installed distribution whose entry point names a module that registers a model."""
    (tmp_path / "fake_models.py").write_text(
        textwrap.dedent(
            """\
            from mlp_models import register_model, TabularModel

            register_model("plugin_mlp")(TabularModel)
            """
        )
    )
    info = tmp_path / "fake_models-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-models\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[mlp.models]\nfake_models = fake_models\nbroken = fake_models_missing\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry_module, "_imported", set())
    monkeypatch.setattr(registry_module, "_failed", {})
    yield
    sys.modules.pop("fake_models", None)


def test_a_plugin_module_registers_its_models_when_a_name_is_not_found(plugin_dist):
    with pytest.warns(PluginImportWarning, match="fake_models_missing"):
        model = create_model("plugin_mlp", num_numeric=2, num_classes=3)
    assert isinstance(model, TabularModel)
    assert "fake_models" in sys.modules
    assert "plugin_mlp" in list_models()


def test_an_unknown_name_lists_the_plugin_modules_that_failed(plugin_dist):
    failed = pytest.raises(RegistryError, match="fake_models_missing: No module named")
    with pytest.warns(PluginImportWarning), failed:
        create_model("plugin_mpl")


def test_a_factory_that_builds_something_else_is_a_model_error(fresh_registry):
    register_model("not_a_model")(lambda: nn.Linear(2, 2))
    with pytest.raises(ModelError, match="built a Linear, not an mlp_models.BaseModel"):
        create_model("not_a_model")
