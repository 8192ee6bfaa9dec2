from __future__ import annotations

import pytest
import torch
from torch import nn

from mlp_core.batch import CATEGORICAL, NUMERIC, TARGET
from mlp_core.errors import ConfigError, ModelError
from mlp_models import TabularModel, create_model, embedding_size
from mlp_models.tabular import ACTIVATIONS

HEADS = {
    "binary": {"task": "binary"},
    "multiclass": {"task": "multiclass", "num_classes": 4},
    "regression": {"task": "regression", "num_outputs": 2},
}


def _batch(model: TabularModel, size: int = 8) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    batch = {NUMERIC: torch.randn(size, model.num_numeric, generator=generator)}
    if model.categorical_cardinalities:
        batch[CATEGORICAL] = torch.stack(
            [
                torch.randint(0, c, (size,), generator=generator)
                for c in model.categorical_cardinalities
            ],
            dim=1,
        )
    if model.task == "regression":
        batch[TARGET] = torch.randn(size, model.num_outputs, generator=generator)
    else:
        batch[TARGET] = torch.randint(0, model.num_classes, (size,), generator=generator)
    return batch


@pytest.mark.parametrize("cardinalities", [[], [3, 7]], ids=["numeric-only", "with-categorical"])
@pytest.mark.parametrize("task", list(HEADS))
def test_each_head_trains_and_predicts(task, cardinalities):
    torch.manual_seed(0)
    model = create_model(
        "tabular_mlp", num_numeric=5, categorical_cardinalities=cardinalities, **HEADS[task]
    )
    batch = _batch(model)
    width = {"binary": 1, "multiclass": 4, "regression": 2}[task]
    assert model.head.out_features == width
    assert len(model.embeddings) == len(cardinalities)

    result = model.training_step(batch)
    assert result.outputs.shape == (8, width)
    result.loss.backward()
    assert model.head.weight.grad.abs().sum() > 0
    for table in model.embeddings:
        assert table.weight.grad.abs().sum() > 0

    predictions = model.predict(batch)
    if task == "regression":
        assert predictions.shape == (8, 2)
    else:
        classes = 2 if task == "binary" else 4
        assert predictions.shape == (8, classes)
        assert torch.allclose(predictions.sum(dim=1), torch.ones(8))


def _fit(model: TabularModel, batch: dict[str, torch.Tensor], steps: int = 150) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model.training_step(batch).loss.backward()
        optimizer.step()
    return model.validation_step(batch).loss.item()


def test_binary_head_learns_a_separable_rule():
    torch.manual_seed(0)
    numeric = torch.randn(64, 2)
    target = (numeric[:, 0] + numeric[:, 1] > 0).long()
    model = TabularModel(num_numeric=2, task="binary", hidden_sizes=[16], dropout=0.0)
    batch = {NUMERIC: numeric, TARGET: target}
    _fit(model, batch)
    accuracy = (model.predict(batch).argmax(dim=1) == target).float().mean()
    assert accuracy > 0.95


def test_multiclass_head_learns_from_embeddings_alone():
    # The class is the category: only the embedding carries the signal.
    torch.manual_seed(0)
    category = torch.arange(60) % 3
    batch = {NUMERIC: torch.randn(60, 1), CATEGORICAL: category.unsqueeze(1), TARGET: category}
    model = TabularModel(
        num_numeric=1, categorical_cardinalities=[3], num_classes=3, hidden_sizes=[8], dropout=0.0
    )
    _fit(model, batch)
    assert (model.predict(batch).argmax(dim=1) == category).all()


def test_regression_head_fits_a_linear_target_of_shape_b():
    torch.manual_seed(0)
    numeric = torch.randn(64, 3)
    target = 2 * numeric[:, 0] - numeric[:, 1]
    model = TabularModel(num_numeric=3, task="regression", hidden_sizes=[32], dropout=0.0)
    batch = {NUMERIC: numeric, TARGET: target}
    start = model.validation_step(batch).loss.item()
    end = _fit(model, batch, steps=200)
    assert end < 0.05 * start
    assert model.predict(batch).shape == (64,)


@pytest.mark.parametrize(
    ("norm", "layer"), [("batch", nn.BatchNorm1d), ("layer", nn.LayerNorm), ("none", None)]
)
@pytest.mark.parametrize("activation", ["relu", "gelu", "silu", "tanh"])
def test_norm_and_activation_build_the_blocks(norm, layer, activation):
    model = TabularModel(
        num_numeric=3, num_classes=2, hidden_sizes=[6, 4], norm=norm, activation=activation
    )
    kinds = [type(m) for m in model.body[0]]
    assert kinds == [nn.Linear, *([layer] if layer else []), ACTIVATIONS[activation], nn.Dropout]
    assert model(torch.randn(4, 3)).shape == (4, 2)


def test_embedding_widths_follow_the_rule_of_thumb_or_the_fixed_size():
    assert [embedding_size(c) for c in (2, 10, 1000)] == [2, 6, 77]
    assert embedding_size(10**9) == 600
    auto = TabularModel(num_numeric=1, categorical_cardinalities=[2, 1000], num_classes=2)
    assert [e.embedding_dim for e in auto.embeddings] == [2, 77]
    fixed = TabularModel(
        num_numeric=1, categorical_cardinalities=[2, 1000], num_classes=2, embedding_dim=5
    )
    assert [e.embedding_dim for e in fixed.embeddings] == [5, 5]
    assert fixed.body[0][0].in_features == 1 + 5 + 5


def test_no_hidden_layers_is_a_linear_model():
    model = TabularModel(num_numeric=4, task="regression", hidden_sizes=[])
    assert len(model.body) == 0
    assert model.parameter_counts().total == 4 + 1


def test_categorical_only_tables_take_an_empty_numeric_input():
    model = TabularModel(num_numeric=0, categorical_cardinalities=[4], num_classes=2)
    outputs = model(torch.zeros(3, 0), torch.tensor([[0], [1], [3]]))
    assert outputs.shape == (3, 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"activation": "rleu"},
            "activation: expected one of relu, gelu, silu, tanh (did you mean 'relu'?); given 'rleu'",
        ),
        ({"norm": "group"}, "norm: expected one of batch, layer, none"),
        ({"task": "ranking"}, "task: expected one of binary, multiclass, regression"),
        ({"dropout": 1.0}, "dropout: expected a number in [0, 1); given 1.0"),
        ({"hidden_sizes": [64, 0]}, "hidden_sizes: expected a list of integers >= 1"),
        ({"hidden_sizes": "64"}, "hidden_sizes: expected a list of integers >= 1"),
        ({"num_numeric": -1}, "num_numeric: expected an integer >= 0"),
        ({"num_numeric": True}, "num_numeric: expected an integer >= 0"),
        ({"categorical_cardinalities": [0]}, "categorical_cardinalities: expected a list"),
        ({"embedding_dim": 0}, "embedding_dim: expected an integer >= 1"),
        ({"num_classes": None}, "task 'multiclass' needs num_classes"),
        ({"num_classes": 1}, "num_classes: expected an integer >= 2"),
        ({"task": "binary", "num_classes": 3}, "task 'binary' has 2 classes"),
        ({"task": "regression", "num_classes": 3}, "takes num_outputs, not num_classes"),
        ({"num_outputs": 2}, "num_outputs is for task 'regression'"),
        ({"num_numeric": 0, "num_classes": 2}, "needs at least one input"),
    ],
)
def test_bad_arguments_are_config_errors_that_say_what_was_expected(kwargs, message):
    arguments = {"num_numeric": 3, "num_classes": 2, **kwargs}
    with pytest.raises(ConfigError) as info:
        TabularModel(**arguments)
    assert message in info.value.message
    assert "tabular_mlp" in info.value.message


def test_batch_problems_are_model_errors_naming_the_input():
    model = TabularModel(num_numeric=3, categorical_cardinalities=[4], num_classes=2)
    good = {NUMERIC: torch.randn(2, 3), CATEGORICAL: torch.zeros(2, 1, dtype=torch.long)}
    with pytest.raises(ModelError, match="reads 'categorical' from the batch"):
        model.predict({NUMERIC: good[NUMERIC]})
    with pytest.raises(ModelError, match=r"batch\['numeric'\] must have shape \[-1, 3\]"):
        model.predict({**good, NUMERIC: torch.randn(2, 4)})
    with pytest.raises(ModelError, match=r"batch\['categorical'\] must be int64"):
        model.predict({**good, CATEGORICAL: torch.zeros(2, 1)})
    with pytest.raises(ModelError, match=r"batch\['numeric'\] must be float32"):
        model.predict({**good, NUMERIC: torch.zeros(2, 3, dtype=torch.long)})
    with pytest.raises(ModelError, match="the batch has no 'target'"):
        model.training_step(good)
    with pytest.raises(ModelError, match="expects int64 class indices"):
        model.training_step({**good, TARGET: torch.zeros(2)})
