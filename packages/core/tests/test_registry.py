import sys
import textwrap
import warnings

import pytest

from mlp_core.errors import RegistryError
from mlp_core.registry import DuplicateNameWarning, Registry


def test_register_get_and_list():
    models = Registry("model")

    @models.register("small")
    def small(width: int = 2):
        return ("small", width)

    models.register("big", lambda: "big")
    assert models.get("small")(width=3) == ("small", 3)
    assert models.names() == ["big", "small"]
    assert "small" in models and "nope" not in models
    assert len(models) == 2


def test_unknown_name_lists_known_and_suggests():
    models = Registry("model")
    models.register("resnet18", object())
    models.register("resnet34", object())
    with pytest.raises(RegistryError) as info:
        models.get("resnet19")
    message = str(info.value)
    assert "unknown model 'resnet19'" in message
    assert "known: resnet18, resnet34" in message
    assert "Did you mean 'resnet18'" in message


def test_duplicate_name_warns_and_later_wins():
    reg = Registry("adapter")
    reg.register("csv", "first")
    with pytest.warns(DuplicateNameWarning, match="'csv' registered twice"):
        reg.register("csv", "second")
    assert reg.get("csv") == "second"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reg.register("csv", "second")  # the same object again is not a duplicate


@pytest.fixture
def plugin_dist(tmp_path, monkeypatch):
    """A real installed distribution (dist-info on sys.path) that declares entry points."""
    (tmp_path / "fake_plugin.py").write_text("def make():\n    return 'from plugin'\n")
    info = tmp_path / "fake_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent(
            """\
            [mlp.test_things]
            plugged = fake_plugin:make
            broken = fake_plugin_missing:make
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("fake_plugin", None)


def test_entry_points_are_discovered_lazily(plugin_dist):
    reg = Registry("thing", group="mlp.test_things")
    assert reg.names() == ["broken", "plugged"]
    assert "fake_plugin" not in sys.modules  # listing names imports nothing
    assert reg.get("plugged")() == "from plugin"
    with pytest.raises(RegistryError, match="'broken' \\(from fake-plugin\\) cannot be loaded"):
        reg.get("broken")


def test_explicit_registration_shadows_entry_point(plugin_dist):
    reg = Registry("thing", group="mlp.test_things")
    reg.register("plugged", "built in")
    assert reg.get("plugged") == "built in"
