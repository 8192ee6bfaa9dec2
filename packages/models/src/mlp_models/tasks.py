"""What a prediction task means for a model's head: its width, its loss and its predictions.

A model's ``forward`` returns raw outputs (logits, or values for regression) because that is what
a loss wants and what an exporter traces; :func:`task_predictions` turns them into what a user
wants (probabilities or values). Keeping both here means every model family agrees on them.
The task names themselves are defined in :mod:`mlp_core.tasks`.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional

from mlp_core.errors import ModelError
from mlp_core.tasks import Task


def task_loss(task: Task, outputs: Tensor, targets: Tensor) -> Tensor:
    """BCE on one logit, cross-entropy on class logits, or MSE on values (mean over the batch)."""
    if task == "binary":
        _check_class_targets(task, outputs, targets)
        # Targets arrive as int64 class indices (the batch contract); BCE wants floats in [0, 1].
        return functional.binary_cross_entropy_with_logits(
            outputs.squeeze(1), targets.to(outputs.dtype)
        )
    if task == "multiclass":
        _check_class_targets(task, outputs, targets)
        return functional.cross_entropy(outputs, targets)
    return functional.mse_loss(outputs, _regression_targets(outputs, targets))


def task_predictions(task: Task, outputs: Tensor) -> Tensor:
    """Probabilities [B, classes] for classification, values for regression.

    A binary head has one logit, but its predictions have two columns (P(0), P(1)) so that
    ``argmax`` and class labels work the same way for every classifier. Single-value regression
    gives [B], the shape of its targets.
    """
    if task == "binary":
        positive = torch.sigmoid(outputs)
        return torch.cat([1 - positive, positive], dim=1)
    if task == "multiclass":
        return torch.softmax(outputs, dim=1)
    return outputs.squeeze(1) if outputs.shape[1] == 1 else outputs


def _check_class_targets(task: Task, outputs: Tensor, targets: Tensor) -> None:
    if targets.dim() != 1 or targets.shape[0] != outputs.shape[0]:
        raise ModelError(
            f"a {task} head expects targets of shape [{outputs.shape[0]}] (class indices), "
            f"got {list(targets.shape)}"
        )
    if targets.is_floating_point():
        raise ModelError(
            f"a {task} head expects int64 class indices as targets, got {targets.dtype}",
            hint="Classification targets are class indices; use task='regression' for numbers.",
        )


def _regression_targets(outputs: Tensor, targets: Tensor) -> Tensor:
    # The batch contract allows [B] for a single value; the head always outputs [B, k].
    if targets.dim() == 1:
        targets = targets.unsqueeze(1)
    if targets.shape != outputs.shape:
        raise ModelError(
            f"a regression head with {outputs.shape[1]} output(s) expects targets of shape "
            f"{[outputs.shape[0], outputs.shape[1]]} (or [{outputs.shape[0]}] for one output), "
            f"got {list(targets.shape)}"
        )
    return targets.to(outputs.dtype)
