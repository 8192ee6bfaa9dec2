from __future__ import annotations

import pytest
import torch
from model_helpers import tiny_model

from mlp_core.errors import ModelError
from mlp_models import TabularModel, load_model, read_model_file


@pytest.fixture
def saved(tmp_path):
    model = tiny_model("tabular_mlp")
    return model, model.save(tmp_path / "model.pt")


def test_save_writes_one_file_with_the_config_and_no_temporary_files(saved, tmp_path):
    model, path = saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    file = read_model_file(path)
    assert file.name == "tabular_mlp"
    assert file.kwargs == model.get_config()
    assert file.metadata["mlp_models_version"]
    assert file.state_dict.keys() == model.state_dict().keys()


def test_load_weights_into_an_existing_model(saved):
    model, path = saved
    other = TabularModel(**model.get_config())
    other.load_weights(path)
    for key, tensor in model.state_dict().items():
        assert torch.equal(other.state_dict()[key], tensor)


def test_a_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(ModelError, match=f"model file {missing} does not exist"):
        load_model(missing)


def test_a_folder_is_not_a_model_file(tmp_path):
    with pytest.raises(ModelError, match="is not a file"):
        load_model(tmp_path)


@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_a_truncated_file_is_a_model_error_naming_it(saved, keep):
    _, path = saved
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelError) as info:
        load_model(path)
    assert str(path) in info.value.message
    assert "truncated or corrupt" in info.value.message
    assert "BaseModel.save()" in info.value.message


def test_garbage_bytes_are_refused_without_unpickling(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a torch file at all")
    with pytest.raises(ModelError, match="cannot be read safely"):
        load_model(path)


class _Pickled:
    """Stands for any arbitrary object: weights_only loading must refuse to rebuild it."""


def test_a_pickled_object_is_never_unpickled(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"model": _Pickled()}, path)
    with pytest.raises(ModelError, match="cannot be read safely") as info:
        load_model(path)
    assert "state dict" in info.value.hint


def test_a_plain_state_dict_is_not_a_model_file(tmp_path):
    path = tmp_path / "state.pt"
    torch.save(tiny_model("tabular_mlp").state_dict(), path)
    with pytest.raises(ModelError, match="is not an mlp model file") as info:
        load_model(path)
    assert "body.0.0.weight" in info.value.message
    assert "pretrained_weights" in info.value.hint


def test_a_file_of_another_model_is_refused_by_name(saved, tmp_path):
    _, path = saved
    with pytest.raises(ModelError, match="holds a 'tabular_mlp' model; expected a 'resnet18'"):
        load_model(path, expected_name="resnet18")
    resnet = tiny_model("resnet18")
    with pytest.raises(ModelError, match="holds a 'tabular_mlp' model; expected a 'resnet18'"):
        resnet.load_weights(path)


def test_mismatched_shapes_name_the_keys(saved):
    model, path = saved
    wider = TabularModel(**{**model.get_config(), "hidden_sizes": [32, 8]})
    with pytest.raises(ModelError) as info:
        wider.load_weights(path)
    message = info.value.message
    assert str(path) in message
    assert "body.0.0.weight is [16, 11] in the file but [32, 11] in the model" in message


def test_a_file_whose_config_no_longer_builds_is_a_model_error(tmp_path):
    path = tmp_path / "edited.pt"
    model = tiny_model("tabular_mlp")
    payload = torch.load(model.save(path), weights_only=True)
    payload["config"] = payload["config"].replace('"num_numeric"', '"n_numeric"')
    torch.save(payload, path)
    with pytest.raises(ModelError, match="whose saved arguments this version cannot build"):
        load_model(path)


def test_a_file_of_an_uninstalled_model_says_so(tmp_path):
    path = tmp_path / "plugin.pt"
    payload = torch.load(tiny_model("tabular_mlp").save(path), weights_only=True)
    payload["config"] = payload["config"].replace('"tabular_mlp"', '"tabular_mlq"')
    torch.save(payload, path)
    with pytest.raises(ModelError, match="'tabular_mlq' model, which is not installed") as info:
        load_model(path)
    assert "Did you mean 'tabular_mlp'" in info.value.message


def test_a_newer_format_version_is_refused(tmp_path):
    path = tmp_path / "future.pt"
    payload = torch.load(tiny_model("tabular_mlp").save(path), weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, path)
    with pytest.raises(ModelError, match="format version 99"):
        load_model(path)


def test_load_model_puts_the_model_on_the_device_in_eval_mode(saved):
    _, path = saved
    model = load_model(path, device="cpu")
    assert not model.training
    assert all(p.device.type == "cpu" for p in model.parameters())
