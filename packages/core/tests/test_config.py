from pathlib import Path

import pytest
import yaml
from pydantic import Field

from mlp_core.config import (
    MlpConfig,
    TrainingSection,
    dump_config,
    flatten,
    load_config,
    parse_override,
    save_config,
)
from mlp_core.errors import ConfigError

ONE_FILE = """
data:
  adapter: csv
  path: data/penguins.csv
  batch_size: 16
model:
  name: tabular_mlp
  hidden_sizes: [64, 32]
training:
  epochs: 5
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_one_file_with_sections(tmp_path):
    cfg = load_config(write(tmp_path / "cfg.yaml", ONE_FILE))
    assert cfg.data.batch_size == 16
    assert cfg.data.path == Path("data/penguins.csv")
    assert cfg.model.name == "tabular_mlp"
    assert cfg.model.model_extra == {"hidden_sizes": [64, 32]}
    assert cfg.training.epochs == 5
    assert cfg.serve.http_port == 8000  # defaults fill the sections not given


def test_three_files_bare_or_wrapped(tmp_path):
    write(tmp_path / "data_config.yaml", "adapter: csv\nbatch_size: 8\n")
    write(tmp_path / "model_config.yaml", "model:\n  name: resnet18\n  num_classes: 10\n")
    write(tmp_path / "training_config.yaml", "epochs: 2\nseed: 7\n")
    cfg = load_config(tmp_path)
    assert (cfg.data.batch_size, cfg.model.name, cfg.training.epochs, cfg.training.seed) == (
        8,
        "resnet18",
        2,
        7,
    )


def test_folder_missing_a_file_names_it(tmp_path):
    write(tmp_path / "data_config.yaml", "adapter: csv\n")
    with pytest.raises(ConfigError, match="model_config.yaml, training_config.yaml"):
        load_config(tmp_path)


def test_overrides_are_coerced(tmp_path):
    path = write(tmp_path / "cfg.yaml", ONE_FILE)
    cfg = load_config(
        path,
        [
            "training.epochs=3",
            "training.device=cuda:1",
            "model.hidden_sizes=[8, 4]",
            "model.dropout=0.25",
            "data.num_workers=2",
        ],
    )
    assert cfg.training.epochs == 3
    assert cfg.training.device == "cuda:1"
    assert cfg.model.model_extra["hidden_sizes"] == [8, 4]
    assert cfg.model.model_extra["dropout"] == 0.25
    assert cfg.data.num_workers == 2


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.epochs", "expected key.path=value"),
        ("nosuch.key=1", "unknown section 'nosuch'"),
        ("model.name.inner=1", "model.name holds 'tabular_mlp', not a mapping"),
    ],
)
def test_bad_override_syntax(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path / "cfg.yaml", ONE_FILE), [override])


def test_every_problem_is_listed_once_with_file_key_expected_and_given(tmp_path):
    write(tmp_path / "data_config.yaml", "adapter: csv\nbatch_size: -4\nbatchsize: 3\n")
    write(tmp_path / "model_config.yaml", "hidden: 3\n")
    write(tmp_path / "training_config.yaml", "epochs: many\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, ["training.seed=-1"])
    message = info.value.message
    assert "invalid configuration (5 problems)" in message
    data_file = str(tmp_path / "data_config.yaml")
    training_file = str(tmp_path / "training_config.yaml")
    lines = message.splitlines()[1:]
    assert f"  - {data_file}: data.batch_size: input should be greater than 0; given -4" in lines
    assert f"  - {data_file}: data.batchsize: unknown key (given 3)" in lines
    assert any(
        line.startswith(f"  - {training_file}: training.epochs: input should be a valid integer")
        and line.endswith("given 'many'")
        for line in lines
    )
    assert any(
        line.startswith("  - --set: training.seed: input should be greater") for line in lines
    )
    assert f"  - {tmp_path / 'model_config.yaml'}: model.name: required key is missing" in lines


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path / "cfg.yaml", "model:\n  name: [unclosed\ntraining: {}\n")
    with pytest.raises(ConfigError, match=r"cfg.yaml: line \d+, column \d+: invalid YAML"):
        load_config(path)


def test_not_utf8_and_not_a_mapping_and_missing(tmp_path):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("model:\n  name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(latin)
    with pytest.raises(ConfigError, match="expected a mapping of keys to values, got list"):
        load_config(write(tmp_path / "list.yaml", "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")


def test_dump_round_trips(tmp_path):
    cfg = load_config(write(tmp_path / "cfg.yaml", ONE_FILE), ["training.epochs=4"])
    saved = save_config(cfg, tmp_path / "out" / "resolved.yaml")
    again = load_config(saved)
    assert again == cfg
    assert yaml.safe_load(dump_config(cfg))["training"]["epochs"] == 4


def test_sections_are_extensible_by_their_owner(tmp_path):
    class MyTraining(TrainingSection):
        optimizer: str = Field("adamw", pattern="^(sgd|adam|adamw)$")

    class MyConfig(MlpConfig):
        training: MyTraining = MyTraining()

    path = write(tmp_path / "cfg.yaml", ONE_FILE)
    cfg = load_config(path, ["training.optimizer=sgd"], schema=MyConfig)
    assert cfg.training.optimizer == "sgd"
    with pytest.raises(ConfigError, match="training.optimizer: string should match pattern"):
        load_config(path, ["training.optimizer=lion"], schema=MyConfig)
    # The base schema still refuses the key it does not know.
    with pytest.raises(ConfigError, match="training.optimizer: unknown key"):
        load_config(path, ["training.optimizer=sgd"])


def test_parse_override_and_flatten():
    assert parse_override("a.b=true") == (["a", "b"], True)
    assert parse_override("a=null") == (["a"], None)
    assert parse_override("a=") == (["a"], "")
    assert parse_override("a=x: [") == (["a"], "x: [")  # not YAML: kept as text
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {
        "a.b": 1,
        "a.c.d": [1, 2],
        "e": {},
    }


def test_validate_section_names_the_section_and_source():
    from pydantic import BaseModel, ConfigDict

    from mlp_core.config import validate_section

    class CsvOptions(BaseModel):
        model_config = ConfigDict(extra="forbid")
        target: str
        delimiter: str = ","

    assert validate_section({"target": "species"}, CsvOptions, "data").target == "species"
    with pytest.raises(ConfigError) as info:
        validate_section({"delim": ";"}, CsvOptions, "data", source="cfg.yaml")
    lines = info.value.message.splitlines()
    assert "  - cfg.yaml: data.target: required key is missing" in lines
    assert "  - cfg.yaml: data.delim: unknown key (given ';')" in lines
