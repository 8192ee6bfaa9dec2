"""YOLOModel: ultralytics' DetectionModel behind mlp's model interface, built offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mlp_core.batch import BOXES, IMAGE
from mlp_core.errors import ConfigError, ModelError
from mlp_models import YOLOModel, create_model, load_model
from mlp_models.ultralytics_env import amp_works
from mlp_models.yolo import RAW_OUTPUT, num_anchors

SIZE = 64
NAMES = ["rectangle", "circle", "triangle"]


@pytest.fixture(scope="module")
def model() -> YOLOModel:
    torch.manual_seed(0)
    built = create_model("yolo", num_classes=3, class_names=NAMES, image_size=SIZE)
    assert isinstance(built, YOLOModel)
    return built.eval()


def test_eval_forward_is_the_raw_head_the_signature_describes(model: YOLOModel) -> None:
    image = torch.rand(2, 3, SIZE, SIZE)
    raw = model(image)
    anchors = 8 * 8 + 4 * 4 + 2 * 2  # strides 8, 16, 32 at 64 px
    assert raw.shape == (2, 4 + 3, anchors) == (2, 4 + 3, num_anchors(SIZE, SIZE))
    # Class scores are sigmoids; boxes are centre/size in input pixels.
    assert raw[:, 4:].min() >= 0.0 and raw[:, 4:].max() <= 1.0
    signature = model.signature()
    assert [s.name for s in signature.inputs] == [IMAGE]
    assert signature.inputs[0].shape == (-1, 3, SIZE, SIZE)
    assert signature.outputs[0].name == RAW_OUTPUT
    assert signature.outputs[0].shape == (-1, 7, anchors)
    assert torch.equal(model.predict({IMAGE: image}), raw)
    assert model.network.names == dict(enumerate(NAMES))


def test_saved_model_rebuilds_offline_with_the_same_outputs(
    model: YOLOModel, tmp_path: Path
) -> None:
    path = model.save(tmp_path / "model")
    loaded = load_model(path, expected_name="yolo")
    assert isinstance(loaded, YOLOModel)
    assert loaded.class_names == NAMES
    # The architecture is saved as the resolved document, not the file name.
    config = loaded.get_config()
    assert isinstance(config["arch"], dict) and config["arch"]["nc"] == 3
    image = torch.rand(1, 3, SIZE, SIZE)
    assert torch.equal(loaded(image), model(image))


def test_training_step_gives_ultralytics_loss_with_gradients() -> None:
    torch.manual_seed(0)
    model = create_model("yolo", num_classes=3, image_size=SIZE).train()
    boxes = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.3], [1, 0, 0.25, 0.3, 0.2, 0.4]])
    result = model.training_step({IMAGE: torch.rand(2, 3, SIZE, SIZE), BOXES: boxes})
    assert result.loss.requires_grad and result.loss.item() > 0
    assert result.outputs.shape == (3,)  # box, cls and dfl loss items
    result.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    with pytest.raises(ModelError, match="no 'boxes'"):
        model.training_step({IMAGE: torch.rand(1, 3, SIZE, SIZE)})


def test_transfer_from_a_local_checkpoint_keeps_the_backbone(
    model: YOLOModel, tmp_path: Path
) -> None:
    # An ultralytics checkpoint (what YOLO(path) loads) of a 3-class model, reused for 5.
    checkpoint = tmp_path / "best.pt"
    torch.save({"model": model.network, "ema": None}, checkpoint)
    five = create_model("yolo", num_classes=5, weights=str(checkpoint), image_size=SIZE)
    mine, theirs = five.network.state_dict(), model.network.state_dict()
    first = "model.0.conv.weight"
    assert torch.equal(mine[first], theirs[first])
    assert five.eval()(torch.rand(1, 3, SIZE, SIZE)).shape[1] == 4 + 5
    same = create_model("yolo", num_classes=3, class_names=NAMES, image_size=SIZE)
    same.load_ultralytics_checkpoint(checkpoint)
    image = torch.rand(1, 3, SIZE, SIZE)
    assert torch.equal(same.eval()(image), model(image))


def test_nothing_downloads_and_bad_arguments_say_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"weights yolov8n\.pt is not a local file"):
        create_model("yolo", num_classes=3, weights="yolov8n.pt")
    with pytest.raises(ConfigError, match=r"arch: expected an architecture \.yaml"):
        create_model("yolo", num_classes=3, arch="yolov8n.pt")
    with pytest.raises(ModelError, match="neither an architecture shipped with ultralytics"):
        create_model("yolo", num_classes=3, arch="no_such_net.yaml")
    with pytest.raises(ConfigError, match="class_names: expected a list of 3 names"):
        create_model("yolo", num_classes=3, class_names=["a"])
    with pytest.raises(ConfigError, match="image_size: expected a multiple of 32"):
        create_model("yolo", num_classes=3, image_size=50)
    not_a_checkpoint = tmp_path / "x.pt"
    not_a_checkpoint.write_bytes(b"not torch")
    with pytest.raises(ModelError, match="is not an ultralytics checkpoint"):
        create_model("yolo", num_classes=3, weights=str(not_a_checkpoint))


def test_amp_check_needs_no_download_and_is_off_on_cpu(model: YOLOModel) -> None:
    assert amp_works(model.network) is False
