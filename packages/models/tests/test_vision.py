from __future__ import annotations

import pytest
import torch
from model_helpers import TINY_IMAGE, tiny_model

from mlp_core.errors import ConfigError, ModelError
from mlp_models import VisionModel, create_model, load_model
from mlp_models.vision import BACKBONES


@pytest.mark.parametrize("name", list(BACKBONES))
def test_forward_is_torchvisions_own_forward(name):
    # Our stage-by-stage forward must compute what torchvision's forward does.
    model = tiny_model(name).eval()
    image = model.example_inputs(2)[0]
    with torch.no_grad():
        assert torch.equal(model(image), model.network(image))


def test_freeze_and_unfreeze_change_the_trainable_count():
    model = tiny_model("resnet18")
    counts = model.parameter_counts()
    assert counts.total == counts.trainable
    head = sum(p.numel() for p in model.network.fc.parameters())

    model.freeze_backbone()
    assert model.backbone_frozen
    assert model.parameter_counts() == (counts.total, head)
    assert model.get_config()["freeze_backbone"] is True

    model.unfreeze_backbone()
    assert model.parameter_counts() == counts
    assert not model.backbone_frozen


def test_a_frozen_backbone_gets_no_gradients_and_the_whole_classifier_trains():
    model = create_model(
        "mobilenet_v3_small", num_classes=3, image_size=TINY_IMAGE, freeze_backbone=True
    )
    model(model.example_inputs(2)[0]).sum().backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"network.classifier.{i}.{k}" for i in (0, 3) for k in ("weight", "bias")}
    assert model.network.features[0][0].weight.grad is None
    assert model.network.classifier[0].weight.grad.abs().sum() > 0


def test_freezing_survives_save_and_load(tmp_path):
    model = create_model("resnet18", num_classes=3, image_size=TINY_IMAGE, freeze_backbone=True)
    loaded = load_model(model.save(tmp_path / "frozen.pt"))
    assert loaded.backbone_frozen
    assert loaded.parameter_counts() == model.parameter_counts()


def _backbone_state(model: VisionModel) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.network.state_dict().items() if not k.startswith("fc.")}


def test_pretrained_torchvision_state_dict_loads_the_backbone_and_keeps_a_new_head(tmp_path):
    source = create_model("resnet18", num_classes=10, image_size=TINY_IMAGE)
    weights = tmp_path / "resnet18-local.pth"
    torch.save(source.network.state_dict(), weights)

    torch.manual_seed(123)
    model = create_model(
        "resnet18", num_classes=3, image_size=TINY_IMAGE, pretrained_weights=weights
    )
    torch.manual_seed(123)
    fresh = create_model("resnet18", num_classes=3, image_size=TINY_IMAGE)

    for key, tensor in _backbone_state(source).items():
        assert torch.equal(model.network.state_dict()[key], tensor), key
    assert model.network.fc.weight.shape == (3, 512)
    # The head is the one a fresh model gets, not anything from the file.
    assert torch.equal(model.network.fc.weight, fresh.network.fc.weight)
    assert "pretrained_weights" not in model.get_config()


def test_pretrained_head_is_kept_when_the_class_count_matches(tmp_path):
    source = create_model("efficientnet_b0", num_classes=3, image_size=TINY_IMAGE)
    model = create_model(
        "efficientnet_b0",
        num_classes=3,
        image_size=TINY_IMAGE,
        pretrained_weights=source.save(tmp_path / "saved.pt"),  # our own files work too
    )
    assert torch.equal(model.network.classifier[1].weight, source.network.classifier[1].weight)


def test_pretrained_rgb_filters_are_spread_over_other_channel_counts(tmp_path):
    source = create_model("resnet18", num_classes=3, image_size=TINY_IMAGE)
    weights = tmp_path / "rgb.pth"
    torch.save(source.network.state_dict(), weights)
    grey = create_model(
        "resnet18", num_classes=3, in_channels=1, image_size=TINY_IMAGE, pretrained_weights=weights
    ).eval()
    assert grey.network.conv1.weight.shape == (64, 1, 7, 7)
    # A grey image through the 1-channel model equals the same image as RGB through the source.
    image = torch.rand(2, 1, TINY_IMAGE, TINY_IMAGE)
    with torch.no_grad():
        assert torch.allclose(grey(image), source.eval()(image.repeat(1, 3, 1, 1)), atol=1e-4)


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0", "mobilenet_v3_small"])
def test_other_channel_counts_replace_the_first_conv(name):
    model = create_model(name, num_classes=2, in_channels=5, image_size=TINY_IMAGE)
    assert model.network.get_submodule(model.layout.first_conv).in_channels == 5
    assert model.signature().inputs[0].shape == (-1, 5, TINY_IMAGE, TINY_IMAGE)
    assert model(torch.randn(2, 5, TINY_IMAGE, TINY_IMAGE)).shape == (2, 2)


def test_a_missing_pretrained_file_is_a_clear_error_and_nothing_downloads(tmp_path):
    missing = tmp_path / "resnet18-f37072fd.pth"
    with pytest.raises(ModelError) as info:
        create_model("resnet18", num_classes=3, pretrained_weights=missing)
    assert str(missing) in info.value.message
    assert "does not exist" in info.value.message
    assert "nothing is downloaded" in info.value.message


def test_weights_of_another_architecture_are_refused(tmp_path):
    weights = tmp_path / "resnet34.pth"
    torch.save(create_model("resnet34", num_classes=3).network.state_dict(), weights)
    with pytest.raises(ModelError) as info:
        create_model("resnet18", num_classes=3, pretrained_weights=weights)
    assert str(weights) in info.value.message
    assert "unexpected key(s) (layer1.2.conv1.weight" in info.value.message


def test_a_file_that_is_not_a_state_dict_is_refused(tmp_path):
    weights = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], weights)
    with pytest.raises(ModelError, match="is not a state dict"):
        create_model("resnet18", num_classes=3, pretrained_weights=weights)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 1}, "num_classes: expected an integer >= 2; given 1"),
        ({"num_classes": 3, "in_channels": 0}, "in_channels: expected an integer >= 1"),
        ({"num_classes": 3, "image_size": 16}, "image_size: expected an integer >= 32"),
        ({"num_classes": 3, "freeze_backbone": "yes"}, "freeze_backbone: expected true or false"),
        ({"num_classes": 3, "pretrained_weights": 5}, "expected a local file path"),
    ],
)
def test_bad_vision_arguments_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match="resnet18") as info:
        create_model("resnet18", **kwargs)
    assert message in info.value.message


def test_an_unknown_backbone_is_a_config_error_listing_the_known_ones():
    with pytest.raises(ConfigError, match="resnet18, resnet34, resnet50, efficientnet_b0"):
        VisionModel("resnet19", num_classes=3)
