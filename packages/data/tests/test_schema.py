import json

import numpy as np
import pandas as pd
import pytest

from mlp_core.errors import ConfigError, DataError
from mlp_data.registry import create_adapter
from mlp_data.tabular.schema import SchemaValidator, load_schema, row_schema

NUMERIC = ["bill_length_mm", "body_mass_g"]


def validator(**kwargs) -> SchemaValidator:
    schema = row_schema(NUMERIC, ["island"], target="species")
    return SchemaValidator(schema, target="species", **kwargs)


def broken(penguins: pd.DataFrame) -> pd.DataFrame:
    frame = penguins[["species", "island", *NUMERIC]].copy()
    frame["body_mass_g"] = frame["body_mass_g"].astype(object)
    frame.loc[[4, 9], "body_mass_g"] = ["heavy", "light"]
    frame.loc[7, "species"] = None
    return frame


def test_every_violation_is_reported_with_row_and_column(penguins):
    with pytest.raises(DataError) as caught:
        validator().apply(broken(penguins), source="penguins.csv")
    message = str(caught.value)
    assert "penguins.csv: 3 schema violations in 3 of 344 rows" in message
    assert "row 5, column 'body_mass_g': 'heavy' is not of type 'number'" in message
    assert "row 8, column 'species': missing value in the target column" in message
    assert "row 10, column 'body_mass_g': 'light'" in message
    # Missing feature values (penguins row 4) are not violations.
    assert "row 4," not in message


def test_drop_removes_only_the_offending_rows(penguins):
    kept = validator(on_invalid="drop").apply(broken(penguins))
    assert len(kept) == len(penguins) - 3
    assert not {4, 7, 9} & set(kept.index)


def test_report_is_capped_with_a_count(penguins):
    frame = penguins[["species", "island", *NUMERIC]].copy()
    frame["bill_length_mm"] = frame["bill_length_mm"].astype(object)
    frame.loc[:99, "bill_length_mm"] = "x"
    with pytest.raises(DataError) as caught:
        validator(max_reported=5).apply(frame)
    lines = [line for line in str(caught.value).splitlines() if line.startswith("  - ")]
    assert len(lines) == 5
    assert "... and 95 more" in str(caught.value)


def test_missing_required_column_fails_even_when_dropping(penguins):
    with pytest.raises(DataError, match="column 'island': required column is missing"):
        validator(on_invalid="drop").apply(penguins[["species", *NUMERIC]])


def test_user_schema_from_yaml_with_bounds(penguins, tmp_path):
    path = tmp_path / "rows.yaml"
    path.write_text(
        "type: object\n"
        "required: [species, body_mass_g]\n"
        "properties:\n"
        "  species: {enum: [Adelie, Gentoo]}\n"
        "  body_mass_g: {type: number, minimum: 3000, maximum: 6000}\n"
    )
    report = SchemaValidator(load_schema(path), target="species").report(penguins)
    by_column = {v.column: v for v in report.violations}
    chinstrap = np.flatnonzero(penguins["species"].eq("Chinstrap").to_numpy())
    assert set(by_column["species"].rows) == set(chinstrap)
    heavy = penguins["body_mass_g"].gt(6000) | penguins["body_mass_g"].lt(3000)
    bad_mass = {int(r) for v in report.violations if v.column == "body_mass_g" for r in v.rows}
    assert bad_mass == set(np.flatnonzero(heavy.to_numpy()))
    assert bad_mass  # penguins do weigh up to 6300 g


def test_schema_relating_columns_is_checked_row_by_row(penguins, tmp_path):
    schema = {
        "type": "object",
        "if": {"properties": {"species": {"const": "Gentoo"}}},
        "then": {"properties": {"island": {"const": "Biscoe"}}},
    }
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(schema))
    frame = penguins.copy()
    frame.loc[200, "island"] = "Dream"  # a Gentoo row
    report = SchemaValidator(load_schema(path), target="species").report(frame)
    assert [(v.column, v.rows.tolist()) for v in report.violations] == [("island", [200])]


def test_invalid_schema_file_is_a_config_error(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('{"type": "object", "properties": {"a": {"type": "numbr"}}}')
    with pytest.raises(ConfigError, match="not a valid JSON Schema at properties/a/type"):
        load_schema(path)


def test_dataset_config_lists_every_violation():
    # The data section is checked by the adapter's own options model, as `mlp train` does.
    document = {"adapter": "csv", "batch_size": 0, "split": {"val": 2}, "task": "clustering"}
    with pytest.raises(ConfigError) as caught:
        create_adapter(document, source="data_config.yaml")
    message = str(caught.value)
    for expected in ("data.batch_size", "data.split.val", "data.task", "data.path", "data.target"):
        assert expected in message
    assert "data_config.yaml" in message
    create_adapter({"adapter": "csv", "path": "x.csv", "target": "y"})  # a valid one passes
