import numpy as np
import pytest

from mlp_core.errors import DataError
from mlp_data.base import SplitConfig
from mlp_data.splits import split_indices


def test_all_rows_assigned_once_and_sizes_follow_fractions():
    parts = split_indices(1000, SplitConfig(val=0.2, test=0.1))
    joined = np.concatenate(list(parts.values()))
    assert sorted(joined.tolist()) == list(range(1000))
    assert {k: len(v) for k, v in parts.items()} == {"train": 700, "val": 200, "test": 100}


def test_same_seed_same_split_other_seed_other_split():
    first = split_indices(500, SplitConfig(seed=3))
    again = split_indices(500, SplitConfig(seed=3))
    other = split_indices(500, SplitConfig(seed=4))
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    assert not np.array_equal(first["val"], other["val"])


def test_stratified_split_keeps_class_proportions(penguins):
    labels = penguins["species"].to_numpy()
    parts = split_indices(len(labels), SplitConfig(val=0.2, test=0.2), labels=labels)
    overall = {c: np.mean(labels == c) for c in set(labels)}
    for rows in parts.values():
        for cls, share in overall.items():
            assert abs(np.mean(labels[rows] == cls) - share) < 0.03


def test_rare_class_cannot_be_stratified_and_says_which():
    labels = ["a"] * 20 + ["b"]
    with pytest.raises(DataError, match=r"'b' \(1\)"):
        split_indices(len(labels), SplitConfig(), labels=labels)
    parts = split_indices(len(labels), SplitConfig(stratify=False), labels=labels)
    assert sum(len(v) for v in parts.values()) == 21


def test_no_val_or_test_keeps_everything_for_training():
    parts = split_indices(10, SplitConfig(val=0, test=0))
    assert parts["train"].tolist() == list(range(10)) and parts["val"].size == 0
