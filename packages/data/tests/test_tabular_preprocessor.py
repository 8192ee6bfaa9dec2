import json

import numpy as np
import pandas as pd
import pytest

from mlp_core import batch
from mlp_core.errors import DataError
from mlp_core.tabular_spec import (
    FIRST_CATEGORY_INDEX,
    MISSING_INDEX,
    UNKNOWN_INDEX,
    PreprocessingOptions,
    TabularPreprocessing,
)
from mlp_data.tabular.preprocessor import TabularPreprocessor

NUMERIC = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
CATEGORICAL = ["island", "sex"]


def fitted(penguins: pd.DataFrame, **options) -> TabularPreprocessor:
    prep = TabularPreprocessor(
        NUMERIC, CATEGORICAL, target="species", options=PreprocessingOptions(**options)
    )
    return prep.fit(penguins)


def odd_rows(penguins: pd.DataFrame) -> pd.DataFrame:
    """Real rows plus one with an unseen island and missing values everywhere but the target."""
    odd = penguins.iloc[:2].copy()
    odd.loc[odd.index[0], "island"] = "Atlantis"
    odd.loc[odd.index[1], ["bill_length_mm", "sex"]] = [np.nan, None]
    return pd.concat([penguins, odd], ignore_index=True)


@pytest.mark.parametrize("encoding", ["onehot", "index"])
def test_json_round_trip_gives_identical_outputs(penguins, tmp_path, encoding):
    prep = fitted(penguins, encoding=encoding, numeric_impute="median", scaling="minmax")
    path = prep.save(tmp_path / "prep.json")
    loaded = TabularPreprocessor.load(path)
    rows = odd_rows(penguins)
    before, after = prep.transform(rows), loaded.transform(rows)
    assert before.keys() == after.keys()
    for key in before:
        assert before[key].dtype == after[key].dtype
        np.testing.assert_array_equal(before[key], after[key])
    assert json.loads(path.read_text())["format"] == "mlp.tabular_preprocessor"
    assert "pickle" not in path.read_text()


def test_unseen_and_missing_categories_go_to_their_slots(penguins):
    prep = fitted(penguins, encoding="index")
    out = prep.transform(odd_rows(penguins))
    island, sex = out[batch.CATEGORICAL][-2], out[batch.CATEGORICAL][-1]
    assert island[0] == UNKNOWN_INDEX  # "Atlantis" never seen in training
    assert sex[1] == MISSING_INDEX
    col = prep.categorical[0]
    assert col.categories == ("Biscoe", "Dream", "Torgersen")
    assert out[batch.CATEGORICAL][0, 0] == FIRST_CATEGORY_INDEX + 2  # first row: Torgersen
    assert prep.model_inputs() == {"num_numeric": 4, "categorical_cardinalities": [5, 4]}


def test_onehot_layout_and_standard_scaling(penguins):
    prep = fitted(penguins)
    out = prep.transform(penguins)
    names = prep.output_columns[batch.NUMERIC]
    assert names[:4] == NUMERIC
    assert names[4:9] == [
        "island=<missing>", "island=<unknown>", "island=Biscoe", "island=Dream", "island=Torgersen",
    ]  # fmt: skip
    assert out[batch.NUMERIC].shape == (len(penguins), 4 + 5 + 4)
    assert out[batch.NUMERIC].dtype == np.float32
    np.testing.assert_array_equal(out[batch.NUMERIC][:, 4:].sum(axis=1), 2.0)  # one slot per col
    observed = penguins["bill_length_mm"].notna().to_numpy()
    scaled = out[batch.NUMERIC][observed, 0].astype(np.float64)
    assert abs(scaled.mean()) < 1e-5 and abs(scaled.std() - 1) < 1e-5
    assert batch.CATEGORICAL not in out


def test_classes_are_sorted_and_targets_encoded(penguins):
    prep = fitted(penguins)
    assert prep.target_classes == ["Adelie", "Chinstrap", "Gentoo"]
    target = prep.transform(penguins)[batch.TARGET]
    assert target.dtype == np.int64
    expected = penguins["species"].map({"Adelie": 0, "Chinstrap": 1, "Gentoo": 2}).to_numpy()
    np.testing.assert_array_equal(target, expected)


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [("mean", 2.0), ("median", 1.0), ("most_frequent", 1.0), ("constant", -7.0)],
)
def test_numeric_imputation(strategy, expected):
    frame = pd.DataFrame({"x": [1.0, 1.0, 4.0, np.nan]})
    prep = TabularPreprocessor(
        ["x"], [], options=PreprocessingOptions(
            numeric_impute=strategy, numeric_fill_value=-7.0, scaling="none"
        ),
    ).fit(frame)  # fmt: skip
    assert prep.transform(frame)[batch.NUMERIC][3, 0] == expected


@pytest.mark.parametrize(
    ("strategy", "slot"), [("missing_slot", 0), ("most_frequent", 3), ("constant", 2)]
)
def test_categorical_imputation(strategy, slot):
    frame = pd.DataFrame({"c": ["b", "b", "a", None]})
    options = PreprocessingOptions(
        categorical_impute=strategy, categorical_fill_value="__none__", encoding="index"
    )
    prep = TabularPreprocessor([], ["c"], options=options).fit(frame)
    # constant adds "__none__" as a known category; it sorts before "a" and "b".
    assert prep.transform(frame)[batch.CATEGORICAL][3, 0] == slot


def test_integer_and_float_spellings_are_one_category():
    prep = TabularPreprocessor([], ["year"], options=PreprocessingOptions(encoding="index"))
    prep.fit(pd.DataFrame({"year": [2007, 2008, 2009]}))
    out = prep.transform(pd.DataFrame({"year": [2008.0, "2008", np.nan]}))
    np.testing.assert_array_equal(out[batch.CATEGORICAL][:, 0], [3, 3, 0])


def test_text_in_numeric_column_names_row_column_and_value(penguins):
    prep = fitted(penguins)
    bad = penguins.copy()
    bad["body_mass_g"] = bad["body_mass_g"].astype(object)
    bad.loc[5, "body_mass_g"] = "heavy"
    with pytest.raises(DataError, match=r"row 6, column 'body_mass_g'.*'heavy'"):
        prep.transform(bad, source="penguins.csv")


def test_unknown_class_and_missing_column_are_errors(penguins):
    prep = fitted(penguins)
    with pytest.raises(DataError, match="'Emperor' is not one of the fitted classes"):
        prep.encode_target(pd.Series(["Adelie", "Emperor"]))
    with pytest.raises(DataError, match=r"missing column\(s\) \['sex'\]"):
        prep.transform(penguins.drop(columns="sex"))


def test_serving_frame_without_target_gives_features_only(penguins):
    out = fitted(penguins).transform(penguins.drop(columns="species").iloc[:3])
    assert set(out) == {batch.NUMERIC}


def test_loading_a_foreign_document_fails(tmp_path):
    (tmp_path / "x.json").write_text('{"format": "other"}')
    with pytest.raises(DataError, match="expected a mlp.tabular_preprocessor version 1 document"):
        TabularPreprocessor.load(tmp_path / "x.json")


def test_the_saved_document_is_the_core_contract_with_the_0_1_keys(penguins, tmp_path):
    prep = fitted(penguins, encoding="index")
    saved = json.loads(prep.save(tmp_path / "prep.json").read_text())
    # The keys preprocessing.json files written by mlp-data 0.1 hold, so old runs still export.
    assert set(saved) == {
        "format", "version", "options", "task", "target", "target_classes", "numeric",
        "categorical", "outputs",
    }  # fmt: skip
    assert set(saved["numeric"][0]) == {"name", "fill_value", "offset", "scale"}
    assert set(saved["categorical"][0]) == {
        "name", "categories", "missing_index", "unknown_index", "first_category_index",
        "fill_index", "cardinality",
    }  # fmt: skip
    assert saved["categorical"][0]["cardinality"] == 5
    assert saved["outputs"] == {batch.NUMERIC: NUMERIC, batch.CATEGORICAL: CATEGORICAL}
    document = TabularPreprocessing.parse(saved)
    assert document.to_dict() == prep.document().to_dict() == saved
    assert TabularPreprocessor.from_document(document).to_dict() == saved


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf - inf
def test_a_column_the_contract_rejects_is_a_data_error_naming_it():
    frame = pd.DataFrame({"x": [1.0, np.inf, 2.0]})
    with pytest.raises(DataError, match="column 'x': cannot fit preprocessing"):
        TabularPreprocessor(["x"], []).fit(frame)
