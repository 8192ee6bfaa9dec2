"""mlp_core.tabular_spec: the fitted tabular preprocessing document and the category key."""

import math

import numpy as np
import pytest

from mlp_core.errors import DataError, ServingError
from mlp_core.tabular_spec import (
    FIRST_CATEGORY_INDEX,
    FORMAT,
    MISSING_INDEX,
    UNKNOWN_INDEX,
    VERSION,
    CategoricalColumn,
    TabularPreprocessing,
    category_key,
)

DOCUMENT = {
    "format": FORMAT,
    "version": VERSION,
    "options": {"encoding": "onehot"},
    "task": "classification",
    "target": "species",
    "target_classes": ["Adelie", "Gentoo"],
    "numeric": [{"name": "bill", "fill_value": 43.9, "offset": 43.9, "scale": 5.4}],
    "categorical": [{"name": "year", "categories": ["2007", "2008", "-1"], "fill_index": 0}],
}


def test_the_slot_layout_is_missing_unknown_then_categories():
    assert (MISSING_INDEX, UNKNOWN_INDEX, FIRST_CATEGORY_INDEX) == (0, 1, 2)


def test_parse_round_trips_and_writes_the_outputs_for_readers():
    document = TabularPreprocessing.parse(DOCUMENT)
    written = document.to_dict()
    assert written["outputs"] == {
        "numeric": [
            "bill",
            "year=<missing>",
            "year=<unknown>",
            "year=2007",
            "year=2008",
            "year=-1",
        ],
        "categorical": [],
    }
    assert written["categorical"][0]["cardinality"] == 5  # filled in for readers
    again = TabularPreprocessing.parse(written)
    assert again.to_dict() == written
    assert again.model_dump(exclude={"outputs"}) == document.model_dump(exclude={"outputs"})
    assert document.numeric_names == ["bill"] and document.categorical_names == ["year"]
    assert document.network_width == 6 and document.cardinalities == []


def test_index_encoding_gives_a_categorical_output_and_embedding_sizes():
    document = TabularPreprocessing.parse({**DOCUMENT, "options": {"encoding": "index"}})
    assert document.encoding == "index"
    assert document.output_columns == {"numeric": ["bill"], "categorical": ["year"]}
    assert document.network_width == 1 and document.cardinalities == [5]


def test_another_format_or_version_is_refused_first():
    with pytest.raises(ServingError, match="expected a mlp.tabular_preprocessor version 1"):
        TabularPreprocessing.parse({**DOCUMENT, "version": 2}, error=ServingError)
    with pytest.raises(DataError, match="format='csv'"):
        TabularPreprocessing.parse({**DOCUMENT, "format": "csv"})


def _with_column(**column):
    return {**DOCUMENT, "categorical": [{"name": "year", "categories": ["2007"], **column}]}


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (_with_column(missing_index=1), "categorical.0.missing_index"),
        (_with_column(first_category_index=3), "categorical.0.first_category_index"),
        (_with_column(cardinality=4), "cardinality disagrees with categories"),
        (_with_column(fill_index=3), "fill_index 3 is no slot"),
        (_with_column(categories=["a", "a"]), "categories repeat"),
        (_with_column(categories=["a", ""]), "hold an empty string"),
    ],
)
def test_a_bad_slot_layout_is_refused(raw, problem):
    with pytest.raises(DataError, match=problem):
        TabularPreprocessing.parse(raw)


def test_a_numeric_column_needs_a_finite_nonzero_scale():
    column = DOCUMENT["numeric"][0]
    with pytest.raises(DataError, match="numeric column 'bill': scale is 0"):
        TabularPreprocessing.parse({**DOCUMENT, "numeric": [{**column, "scale": 0.0}]})
    for bad in (math.inf, math.nan):
        with pytest.raises(DataError, match=r"numeric\.0\.offset"):
            TabularPreprocessing.parse({**DOCUMENT, "numeric": [{**column, "offset": bad}]})


class NAType:
    """Stands in for pandas.NA, which category_key recognises by its type's name."""


@pytest.mark.parametrize(
    ("value", "key"),
    [
        (2007, "2007"),
        (2007.0, "2007"),  # an int column with gaps reads as floats
        (np.float64(2007.0), "2007"),
        (np.float32(2008.0), "2008"),
        (2.5, "2.5"),
        (np.int64(3), "3"),
        ("2007.0", "2007.0"),  # text is compared as written; lookup() adds the alias
        ("Dream", "Dream"),
        (True, "True"),
        (np.bool_(False), "False"),
        (None, None),
        (math.nan, None),
        (np.float32("nan"), None),
        (NAType(), None),
    ],
)
def test_category_key(value, key):
    assert category_key(value) == key


def test_lookup_knows_the_float_spelling_of_whole_numbers():
    column = CategoricalColumn(name="year", categories=("2007", "2008", "-1", "x"), fill_index=1)
    assert column.slots == 6
    assert column.index == {"2007": 2, "2008": 3, "-1": 4, "x": 5}
    assert column.lookup() == {
        "2007": 2, "2008": 3, "-1": 4, "x": 5, "2007.0": 2, "2008.0": 3, "-1.0": 4,
    }  # fmt: skip
    assert column.slot_of("2008.0") == 3
    assert column.slot_of("x") == 5
    assert column.slot_of("2009") == UNKNOWN_INDEX
    assert column.slot_of("") == 1  # missing: the column's fill_index
    assert column.slot_names()[:3] == ["year=<missing>", "year=<unknown>", "year=2007"]
