import json

import numpy as np
import pandas as pd
import pytest
import torch

from mlp_core import batch
from mlp_core.errors import ConfigError, DataError, RegistryError
from mlp_data.registry import create_adapter, list_adapters
from mlp_data.tabular.adapter import CSVAdapter
from mlp_data.tabular.preprocessor import TabularPreprocessor


def adapter(path, **options) -> CSVAdapter:
    return create_adapter({"adapter": "csv", "path": str(path), "target": "species", **options})


def test_penguins_end_to_end_to_a_typed_batch(penguins_csv):
    data = adapter(penguins_csv, batch_size=32, preprocessing={"encoding": "index"})
    info = data.info()
    assert info.task == "classification"
    assert info.class_names == ["Adelie", "Chinstrap", "Gentoo"] and info.num_classes == 3
    # year is a number, so it is inferred numeric; island and sex are text.
    assert info.model_inputs == {"num_numeric": 5, "categorical_cardinalities": [5, 4]}
    assert sum(info.sizes.values()) == 344 and info.sizes["train"] == 240
    assert info.model_kwargs()["num_classes"] == 3
    first = next(iter(data.loaders()["train"]))
    assert set(first) == {batch.NUMERIC, batch.CATEGORICAL, batch.TARGET}
    assert first[batch.NUMERIC].dtype == torch.float32 and first[batch.NUMERIC].shape == (32, 5)
    assert first[batch.CATEGORICAL].dtype == torch.int64
    assert first[batch.CATEGORICAL].shape == (32, 2)
    assert first[batch.TARGET].dtype == torch.int64 and first[batch.TARGET].shape == (32,)
    assert not torch.isnan(first[batch.NUMERIC]).any()  # missing values were imputed


def test_saved_preprocessing_reproduces_the_training_tensors(penguins_csv, penguins):
    data = adapter(penguins_csv, shuffle=False)
    restored = TabularPreprocessor.from_json(json.dumps(data.preprocessing()["preprocessor"]))
    rows = penguins.iloc[data.indices["train"]]
    expected = restored.transform(rows)
    dataset = data.dataset("train")
    for key, tensor in dataset.tensors.items():
        np.testing.assert_array_equal(tensor.numpy(), expected[key])
    # The fitted statistics come from the training rows only.
    train_mean = rows["bill_length_mm"].mean()
    assert data.preprocessor.numeric[0].offset == pytest.approx(train_mean)
    assert data.preprocessor.numeric[0].offset != pytest.approx(penguins["bill_length_mm"].mean())


def test_raw_penguins_with_an_explicit_schema(penguins_raw_csv):
    data = create_adapter({
        "adapter": "csv", "path": str(penguins_raw_csv), "target": "Species",
        "numeric": ["Culmen Length (mm)", "Flipper Length (mm)", "Delta 15 N (o/oo)"],
        "categorical": ["Island", "Sex", "Clutch Completion"],
    })  # fmt: skip
    info = data.info()
    assert [n.split()[0] for n in info.class_names] == ["Adelie", "Chinstrap", "Gentoo"]
    island, sex, clutch = data.preprocessor.categorical
    assert island.categories == ("Biscoe", "Dream", "Torgersen")
    assert {"FEMALE", "MALE"} <= set(sex.categories) <= {"FEMALE", "MALE", "."}
    assert clutch.categories == ("No", "Yes")
    # 3 numbers, then one-hot slots: each column's categories plus missing and unknown.
    assert info.model_inputs["num_numeric"] == 3 + 5 + len(sex.categories) + 2 + 4
    assert data.frame.columns.tolist() == [
        "Species", "Culmen Length (mm)", "Flipper Length (mm)", "Delta 15 N (o/oo)",
        "Island", "Sex", "Clutch Completion",
    ]  # fmt: skip


def test_parquet_gives_the_same_tensors_as_csv(penguins_csv, penguins, tmp_path):
    parquet = tmp_path / "penguins.parquet"
    penguins.to_parquet(parquet)
    from_csv, from_parquet = adapter(penguins_csv), adapter(parquet)
    for split in ("train", "val", "test"):
        a, b = from_csv.dataset(split).tensors, from_parquet.dataset(split).tensors
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_regression_task_is_inferred_from_a_continuous_target(penguins_csv):
    data = create_adapter({
        "adapter": "csv", "path": str(penguins_csv), "target": "body_mass_g",
        "validation": {"on_invalid": "drop"}, "split": {"stratify": False},
    })  # fmt: skip
    info = data.info()
    assert info.task == "regression" and info.num_classes is None
    assert sum(info.sizes.values()) == 342  # the two rows without a body mass are dropped
    target = next(iter(data.loaders(("val",))["val"]))[batch.TARGET]
    assert target.dtype == torch.float32 and target.min() > 2000


def test_loader_batches_come_in_the_configured_sizes(penguins_csv):
    loaders = adapter(penguins_csv, batch_size=50, drop_last=True).loaders()
    assert [len(b[batch.TARGET]) for b in loaders["train"]] == [50] * 4  # 240 rows, last dropped
    assert [len(b[batch.TARGET]) for b in loaders["val"]] == [50, 2]  # never dropped outside train


def test_loaders_cover_every_row_once(penguins_csv):
    loaders = adapter(penguins_csv, batch_size=100, shuffle=False).loaders()
    sizes = {split: sum(len(b[batch.TARGET]) for b in loader) for split, loader in loaders.items()}
    assert sizes == {"train": 240, "val": 52, "test": 52}


# -- bad input ---------------------------------------------------------------------------------


def test_unknown_adapter_name_is_a_registry_error():
    assert "csv" in list_adapters()
    with pytest.raises(RegistryError, match="unknown data adapter 'cvs'.*Did you mean 'csv'"):
        create_adapter({"adapter": "cvs", "path": "x.csv"})


def test_missing_target_option_is_a_config_error(penguins_csv):
    with pytest.raises(ConfigError, match="data.target: required key is missing"):
        create_adapter({"adapter": "csv", "path": str(penguins_csv)})


def test_missing_target_column_names_file_and_columns(penguins_csv):
    with pytest.raises(DataError, match=r"penguins.csv: target column 'Species' not found.*island"):
        create_adapter({"adapter": "csv", "path": str(penguins_csv), "target": "Species"}).prepare()


def test_text_in_a_numeric_column_names_file_row_column_and_value(penguins, tmp_path):
    frame = penguins.astype({"flipper_length_mm": object})
    frame.loc[41, "flipper_length_mm"] = "n/a?"
    path = tmp_path / "typo.csv"
    frame.to_csv(path, index=False)
    data = adapter(path, numeric=["flipper_length_mm"], categorical=["island"])
    with pytest.raises(DataError) as caught:
        data.prepare()
    message = str(caught.value)
    assert str(path) in message
    assert "row 42, column 'flipper_length_mm': 'n/a?' is not of type 'number'" in message
    dropped = adapter(path, numeric=["flipper_length_mm"], validation={"on_invalid": "drop"})
    assert sum(dropped.info().sizes.values()) == 343


def test_missing_target_value_is_reported(penguins, tmp_path):
    frame = penguins.copy()
    frame.loc[9, "species"] = None
    path = tmp_path / "no_label.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match="row 10, column 'species': missing value in the target"):
        adapter(path).prepare()


def test_empty_and_header_only_files(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty.csv is empty \(0 bytes\)"):
        adapter(empty).prepare()
    header = tmp_path / "header.csv"
    header.write_text("species,island\n")
    with pytest.raises(DataError, match=r"header.csv: has a header .* but no data rows"):
        adapter(header).prepare()


def test_non_utf8_file_names_byte_offset_and_line(penguins_csv, tmp_path):
    latin = tmp_path / "latin1.csv"
    lines = penguins_csv.read_bytes().splitlines(keepends=True)
    lines[3] = lines[3].replace(b"Torgersen", "Torgersén".encode("latin-1"))
    latin.write_bytes(b"".join(lines))
    offset = sum(map(len, lines[:3])) + lines[3].index(b"\xe9")
    with pytest.raises(DataError, match=rf"not UTF-8.*b'\\xe9' at byte offset {offset} \(line 4\)"):
        adapter(latin).prepare()


def test_file_not_found_names_the_path(tmp_path):
    with pytest.raises(DataError, match=r"data file .*nothing.csv does not exist"):
        adapter(tmp_path / "nothing.csv").prepare()


def test_schema_file_rules_apply(penguins_csv, tmp_path):
    schema = tmp_path / "rows.json"
    schema.write_text(json.dumps({
        "type": "object",
        "properties": {"island": {"enum": ["Biscoe", "Dream"]}},
    }))  # fmt: skip
    data = adapter(penguins_csv, validation={"schema_file": str(schema), "on_invalid": "drop"})
    assert sum(data.info().sizes.values()) == 344 - 52  # the Torgersen rows
    with pytest.raises(DataError, match="52 schema violations"):
        adapter(penguins_csv, validation={"schema_file": str(schema)}).prepare()


def test_conflicting_column_lists_are_a_config_error(penguins_csv):
    with pytest.raises(ConfigError, match="both numeric and categorical"):
        adapter(penguins_csv, numeric=["year"], categorical=["year"])


def test_penguins_frame_is_left_unchanged_by_validation(penguins_csv):
    # Validation must neither reorder nor re-type what was read (NaN stays NaN for imputation).
    data = adapter(penguins_csv)
    data.prepare()
    original = pd.read_csv(penguins_csv, engine="pyarrow")
    pd.testing.assert_frame_equal(data.frame, original, check_dtype=False)
