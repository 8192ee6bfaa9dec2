"""The tabular MLP, registered as ``tabular_mlp``.

Numeric columns go in as they are (mlp-data scales them); each categorical column is looked up
in its own embedding table. The concatenation runs through ``Linear -> norm -> activation ->
dropout`` blocks and a head sized for the task: one logit (binary, BCE), one logit per class
(multiclass, cross-entropy) or ``num_outputs`` values (regression, MSE).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from mlp_core.batch import CATEGORICAL, NUMERIC
from mlp_core.errors import ConfigError
from mlp_core.tasks import TASKS, Task
from mlp_core.tensors import DYNAMIC, ModelSignature, TensorSpec
from mlp_models.arguments import check_choice, check_fraction, check_int, check_int_list
from mlp_models.base import BaseModel
from mlp_models.registry import register_model

NAME = "tabular_mlp"
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}
NORMS = ("batch", "layer", "none")


def embedding_size(cardinality: int) -> int:
    """Rule of thumb for an embedding width: grows slowly with the number of categories.

    The 1.6 * n ** 0.56 curve (capped at 600) is the one fast.ai found to work across many
    tabular datasets; a column with 2 categories gets 2 dimensions, one with 1000 gets 77.
    """
    return min(600, round(1.6 * cardinality**0.56))


@register_model(NAME)
class TabularModel(BaseModel):
    """MLP over numeric features and embedded categorical indices."""

    def __init__(
        self,
        *,
        num_numeric: int,
        categorical_cardinalities: Sequence[int] = (),
        task: Task = "multiclass",
        num_classes: int | None = None,
        num_outputs: int = 1,
        hidden_sizes: Sequence[int] = (128, 64),
        activation: str = "relu",
        dropout: float = 0.1,
        norm: str = "batch",
        embedding_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.num_numeric = check_int(NAME, "num_numeric", num_numeric, minimum=0)
        self.categorical_cardinalities = check_int_list(
            NAME, "categorical_cardinalities", categorical_cardinalities, minimum=1
        )
        if self.num_numeric == 0 and not self.categorical_cardinalities:
            raise ConfigError(
                f"model {NAME!r}: needs at least one input: num_numeric is 0 and there are no "
                "categorical_cardinalities"
            )
        self.task = cast(Task, check_choice(NAME, "task", task, TASKS))
        self.num_classes, self.num_outputs, self.head_width = _check_head(
            self.task, num_classes, num_outputs
        )
        self.hidden_sizes = check_int_list(NAME, "hidden_sizes", hidden_sizes, minimum=1)
        self.activation = check_choice(NAME, "activation", activation, ACTIVATIONS)
        self.dropout = check_fraction(NAME, "dropout", dropout)
        self.norm = check_choice(NAME, "norm", norm, NORMS)
        self.embedding_dim = (
            None
            if embedding_dim is None
            else check_int(NAME, "embedding_dim", embedding_dim, minimum=1)
        )

        widths = [
            self.embedding_dim or embedding_size(cardinality)
            for cardinality in self.categorical_cardinalities
        ]
        self.embeddings = nn.ModuleList(
            nn.Embedding(cardinality, width)
            for cardinality, width in zip(self.categorical_cardinalities, widths)
        )
        width = self.num_numeric + sum(widths)
        blocks: list[nn.Module] = []
        for size in self.hidden_sizes:
            blocks.append(self._block(width, size))
            width = size
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(width, self.head_width)

    @property
    def model_name(self) -> str:
        return NAME

    def get_config(self) -> dict[str, Any]:
        return {
            "num_numeric": self.num_numeric,
            "categorical_cardinalities": list(self.categorical_cardinalities),
            "task": self.task,
            "num_classes": self.num_classes,
            "num_outputs": self.num_outputs,
            "hidden_sizes": list(self.hidden_sizes),
            "activation": self.activation,
            "dropout": self.dropout,
            "norm": self.norm,
            "embedding_dim": self.embedding_dim,
        }

    def signature(self) -> ModelSignature:
        inputs = [TensorSpec(name=NUMERIC, datatype="FP32", shape=(DYNAMIC, self.num_numeric))]
        if self.categorical_cardinalities:
            shape = (DYNAMIC, len(self.categorical_cardinalities))
            inputs.append(TensorSpec(name=CATEGORICAL, datatype="INT64", shape=shape))
        output = "predictions" if self.task == "regression" else "logits"
        return ModelSignature(
            inputs=tuple(inputs),
            outputs=(TensorSpec(name=output, datatype="FP32", shape=(DYNAMIC, self.head_width)),),
        )

    def forward(self, numeric: Tensor, categorical: Tensor | None = None) -> Tensor:
        features = [numeric]
        if self.embeddings:
            if categorical is None:
                raise TypeError(
                    f"{NAME} has {len(self.embeddings)} categorical column(s): pass categorical"
                )
            features.extend(table(categorical[:, i]) for i, table in enumerate(self.embeddings))
        return self.head(self.body(torch.cat(features, dim=1)))

    def _block(self, width_in: int, width_out: int) -> nn.Sequential:
        layers: list[nn.Module] = [nn.Linear(width_in, width_out)]
        if self.norm == "batch":
            layers.append(nn.BatchNorm1d(width_out))
        elif self.norm == "layer":
            layers.append(nn.LayerNorm(width_out))
        layers.append(ACTIVATIONS[self.activation]())
        if self.dropout > 0:
            layers.append(nn.Dropout(self.dropout))
        return nn.Sequential(*layers)


def _check_head(task: str, num_classes: Any, num_outputs: Any) -> tuple[int | None, int, int]:
    """Validate the head arguments of ``task``; returns (num_classes, num_outputs, width)."""
    if task == "multiclass":
        if num_classes is None:
            raise ConfigError(
                f"model {NAME!r}: task 'multiclass' needs num_classes (an integer >= 2)",
                hint="Pass num_classes, or task='regression' to predict numbers.",
            )
        classes = check_int(NAME, "num_classes", num_classes, minimum=2)
        outputs = check_int(NAME, "num_outputs", num_outputs, minimum=1)
        if outputs != 1:
            raise _outputs_error(task, num_outputs)
        return classes, outputs, classes
    if task == "binary" and num_classes not in (None, 2):
        raise ConfigError(
            f"model {NAME!r}: task 'binary' has 2 classes; given num_classes={num_classes!r}",
            hint="Use task='multiclass' for more than two classes.",
        )
    elif task == "regression" and num_classes is not None:
        raise ConfigError(
            f"model {NAME!r}: task 'regression' takes num_outputs, not num_classes "
            f"(given num_classes={num_classes!r})"
        )
    outputs = check_int(NAME, "num_outputs", num_outputs, minimum=1)
    if task == "binary":
        if outputs != 1:
            raise _outputs_error(task, num_outputs)
        return 2, outputs, 1  # two classes, one logit
    return None, outputs, outputs


def _outputs_error(task: str, num_outputs: Any) -> ConfigError:
    return ConfigError(
        f"model {NAME!r}: num_outputs is for task 'regression'; task {task!r} was given "
        f"num_outputs={num_outputs!r}"
    )
