"""Prediction tasks: the one vocabulary for what a model's head predicts.

Models size their head and pick their loss by it (:mod:`mlp_models.tasks`), the trainer picks
its metrics and the monitor names they allow by it, and the exporter its output columns:

- ``"binary"``: one logit, BCE; predictions are two columns (P(0), P(1));
- ``"multiclass"``: one logit per class, cross-entropy; predictions are softmax probabilities;
- ``"regression"``: one value per output, MSE.

Data speaks of its target, not of a head: a column of classes (``"classification"``) or of
numbers (``"regression"``), as ``dataset.json`` and ``preprocessing.json`` record it.
:func:`prediction_task` is the one place where the first becomes the second.
"""

from __future__ import annotations

from typing import Literal, get_args

from mlp_core.errors import ConfigError

Task = Literal["binary", "multiclass", "regression"]
TASKS: tuple[Task, ...] = get_args(Task)


def prediction_task(target_kind: str) -> Task:
    """The head a target of ``target_kind`` trains: classes get a softmax head (one logit per
    class, also for two classes, so every classifier's outputs read the same way); numbers a
    regression head."""
    if target_kind == "classification":
        return "multiclass"
    if target_kind == "regression":
        return "regression"
    raise ConfigError(
        f"no prediction task for {target_kind!r} data; the trainer handles classification and "
        "regression targets"
    )
