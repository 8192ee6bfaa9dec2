"""The names the architecture uses are importable from ``mlp_data``, and the ``mlp.adapters``
entry points name the classes the adapters register under."""

from importlib.metadata import entry_points

import mlp_data
from mlp_data.registry import adapters


def test_every_public_name_is_importable_from_the_top():
    for name in mlp_data.__all__:
        assert getattr(mlp_data, name) is not None, name


def test_entry_points_load_the_registered_adapters():
    found = {entry.name: entry for entry in entry_points(group="mlp.adapters")}
    assert {"csv", "image_folder", "yolo"} <= set(found)
    for name in ("csv", "image_folder", "yolo"):
        assert found[name].load() is adapters.get(name)
    assert found["csv"].load() is mlp_data.CSVAdapter
    assert found["image_folder"].load() is mlp_data.ImageFolderAdapter
    assert found["yolo"].load() is mlp_data.YOLOAdapter
