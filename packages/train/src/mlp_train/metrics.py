"""Metrics that accumulate batch by batch and add up across DDP ranks.

Every metric keeps additive sufficient statistics (a confusion matrix, sums of errors, a weighted
sum and a count) rather than a list of per-batch values: summing the state of all ranks with one
``all_reduce`` then gives exactly the metric of the whole data set, and memory does not grow with
the number of batches. ROC-AUC is the exception (it ranks every score), so the binary scores are
kept and gathered.

Conventions follow scikit-learn so that numbers match what users check by hand: a precision,
recall or F1 whose denominator is zero is 0 (``zero_division=0``), macro averages run over the
classes that occur in the targets or the predictions (sklearn's default ``labels=None``), and a
multi-output regression metric is the uniform average over outputs.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from mlp_core.errors import ConfigError, TrainingError

SPLITS: tuple[str, ...] = ("train", "val")

_AVERAGES = ("macro", "micro", "weighted")
_AVERAGED_SCORES = [
    f"{score}_{average}" for score in ("precision", "recall", "f1") for average in _AVERAGES
]

# What ``compute()`` returns for each mlp-models task (the keys of its dict, in this order).
METRIC_NAMES: dict[str, list[str]] = {
    # precision/recall/f1 without a suffix are those of the positive class 1, as sklearn's
    # average="binary" reports them: the number people mean by "precision" of a binary model.
    "binary": ["accuracy", "precision", "recall", "f1", *_AVERAGED_SCORES, "roc_auc"],
    "multiclass": ["accuracy", *_AVERAGED_SCORES],
    "regression": ["mse", "rmse", "mae", "r2"],
}


# Sums of squares cancel catastrophically when the variance is tiny next to the mean squared; a
# total sum of squares below this fraction of sum(y^2) is rounding noise, i.e. constant targets.
_CONSTANT_TARGET_TOLERANCE = 64 * float(np.finfo(np.float64).eps)


class SyncedMetric(ABC):
    """State that sums across ranks, synced at most once between resets.

    Syncing twice would add the other ranks' state again, and updating after a sync would mix
    global and local counts, so both are refused in every process, distributed or not: a trainer
    that gets this wrong fails on one CPU instead of silently on eight GPUs.
    """

    def __init__(self) -> None:
        self._synced = False

    @abstractmethod
    def state_tensors(self) -> list[Tensor]:
        """The live tensors that ``sync`` sums across ranks (in place)."""

    @abstractmethod
    def reset(self) -> None:
        """Forget everything seen so far (call at the start of each epoch)."""

    def sync(self, process_group: dist.ProcessGroup | None = None) -> None:
        """Sum this metric's state over the ranks of ``process_group``; a no-op without DDP."""
        if self._synced:
            raise TrainingError(
                f"{type(self).__name__} was already synced across ranks",
                hint="Call reset() before updating and syncing it again.",
            )
        self._synced = True
        if not _distributed():
            return
        self._prepare_sync(process_group)
        for tensor in self.state_tensors():
            _all_reduce_sum_(tensor, process_group)
        self._gather_unreduced(process_group)

    def _prepare_sync(self, process_group: dist.ProcessGroup | None) -> None:
        """Make the state tensors exist with the same shapes on every rank before reducing."""
        return  # state allocated up front (a confusion matrix, a sum) already agrees

    def _gather_unreduced(self, process_group: dist.ProcessGroup | None) -> None:
        """Collect state that cannot be summed (kept per sample) from every rank."""
        return  # only per-sample state (ROC scores) needs gathering

    def _check_not_synced(self) -> None:
        if self._synced:
            raise TrainingError(
                f"{type(self).__name__} cannot be updated after sync()",
                hint="Call reset() at the start of the next epoch, before the first update.",
            )

    def _reset_sync(self) -> None:
        self._synced = False


class ClassificationMetrics(SyncedMetric):
    """Accuracy, precision, recall, F1 (macro, micro, weighted) and, for two classes, ROC-AUC.

    ``update`` takes probabilities or logits [B, C] (the predicted class is the argmax, the same
    for both) and integer targets [B]. ROC-AUC ranks the margin ``out[:, 1] - out[:, 0]``, which
    orders samples exactly as P(class 1) does for probabilities and for logits alike. When the
    targets hold a single class ROC-AUC is undefined: ``compute`` returns NaN for it (sklearn
    raises) so that one unlucky validation split does not stop a training run.
    """

    def __init__(self, num_classes: int, class_names: list[str] | None = None) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ConfigError(
                f"{len(class_names)} class names given for {num_classes} classes: "
                f"{list(class_names)!r}",
                hint="Give one name per class, in class-index order.",
            )
        self.num_classes = num_classes
        self.class_names = (
            [str(name) for name in class_names]
            if class_names is not None
            else [str(index) for index in range(num_classes)]
        )
        self.reset()

    def reset(self) -> None:
        self._confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        self._roc_rows: list[Tensor] = []  # [B, 2] float rows of (margin, target), binary only
        self._reset_sync()

    @property
    def is_binary(self) -> bool:
        return self.num_classes == 2

    def update(self, probabilities_or_logits: Tensor, targets: Tensor) -> None:
        self._check_not_synced()
        outputs = probabilities_or_logits.detach()
        targets = targets.detach().to(outputs.device)
        self._check_batch(outputs, targets)
        # State follows the data's device so that a GPU loop never waits on a copy per batch.
        self._confusion = self._confusion.to(outputs.device)
        predicted = outputs.argmax(dim=1)
        cells = targets * self.num_classes + predicted
        self._confusion += torch.bincount(cells, minlength=self.num_classes**2).view_as(
            self._confusion
        )
        if self.is_binary:
            dtype = _accumulator_dtype(outputs.device)
            margin = outputs[:, 1].to(dtype) - outputs[:, 0].to(dtype)
            self._roc_rows.append(torch.stack([margin, targets.to(dtype)], dim=1))

    def state_tensors(self) -> list[Tensor]:
        return [self._confusion]

    def _gather_unreduced(self, process_group: dist.ProcessGroup | None) -> None:
        if self.is_binary:
            self._roc_rows = [_all_gather_rows(self._roc_table(), process_group)]

    def confusion_matrix(self) -> np.ndarray:
        """Counts [C, C] as int64: rows are true classes, columns predicted classes."""
        return self._confusion.cpu().numpy().copy()

    def compute(self) -> dict[str, float]:
        """The metrics of everything seen since the last reset, in ``METRIC_NAMES`` order."""
        scores = self._per_class_scores()
        confusion = self._confusion.cpu().to(torch.float64)
        true_counts, predicted_counts = confusion.sum(dim=1), confusion.sum(dim=0)
        total = confusion.sum()
        correct = confusion.diagonal().sum()
        # sklearn's labels=None: a class absent from both targets and predictions is no class.
        present = (true_counts + predicted_counts) > 0
        result = {"accuracy": _item(correct / total)}
        if self.is_binary:
            for name, values in scores.items():
                result[name] = _item(values[1])
        micro = {
            "precision": _safe_divide(correct, predicted_counts.sum()),
            "recall": _safe_divide(correct, true_counts.sum()),
            "f1": _safe_divide(2 * correct, true_counts.sum() + predicted_counts.sum()),
        }
        for name, values in scores.items():
            result[f"{name}_macro"] = _item(values[present].mean())
            result[f"{name}_micro"] = _item(micro[name])
            result[f"{name}_weighted"] = _item((values * true_counts).sum() / total)
        if self.is_binary:
            rows = self._roc_table()
            result["roc_auc"] = _roc_auc(rows[:, 0], rows[:, 1] > 0.5)
        return {name: result[name] for name in METRIC_NAMES[self._task]}

    def per_class(self) -> dict[str, dict[str, float]]:
        """Precision, recall, F1 and support of each class, keyed by class name."""
        scores = self._per_class_scores()
        support = self._confusion.cpu().sum(dim=1)
        return {
            name: {
                "precision": _item(scores["precision"][index]),
                "recall": _item(scores["recall"][index]),
                "f1": _item(scores["f1"][index]),
                "support": float(support[index]),
            }
            for index, name in enumerate(self.class_names)
        }

    @property
    def _task(self) -> str:
        return "binary" if self.is_binary else "multiclass"

    def _per_class_scores(self) -> dict[str, Tensor]:
        if int(self._confusion.sum()) == 0:
            raise TrainingError(
                "classification metrics were computed before any sample was seen",
                hint="Check that the data loader of this split yields at least one batch.",
            )
        confusion = self._confusion.cpu().to(torch.float64)
        hits = confusion.diagonal()
        true_counts, predicted_counts = confusion.sum(dim=1), confusion.sum(dim=0)
        return {
            "precision": _safe_divide(hits, predicted_counts),
            "recall": _safe_divide(hits, true_counts),
            # 2TP / (2TP + FP + FN): equal to 2PR / (P + R) and defined where P or R is 0.
            "f1": _safe_divide(2 * hits, true_counts + predicted_counts),
        }

    def _roc_table(self) -> Tensor:
        if not self._roc_rows:
            return torch.zeros(0, 2, dtype=_accumulator_dtype(self._confusion.device))
        return torch.cat(self._roc_rows)

    def _check_batch(self, outputs: Tensor, targets: Tensor) -> None:
        if outputs.dim() != 2 or outputs.shape[1] != self.num_classes:
            raise TrainingError(
                f"classification metrics for {self.num_classes} classes expect outputs of shape "
                f"[batch, {self.num_classes}], got {list(outputs.shape)}",
                hint="Pass the model's class probabilities or logits, one column per class.",
            )
        if targets.shape != (outputs.shape[0],):
            raise TrainingError(
                f"expected targets of shape [{outputs.shape[0]}] (class indices), "
                f"got {list(targets.shape)}"
            )
        if targets.is_floating_point() or targets.dtype == torch.bool:
            raise TrainingError(f"class targets must be integer class indices, got {targets.dtype}")
        if targets.numel() and bool(((targets < 0) | (targets >= self.num_classes)).any()):
            raise TrainingError(
                f"class targets must lie in [0, {self.num_classes}), got values from "
                f"{int(targets.min())} to {int(targets.max())}",
                hint="Check num_classes against the labels of the data set.",
            )


class RegressionMetrics(SyncedMetric):
    """MSE, RMSE, MAE and R² from sums, averaged uniformly over outputs as sklearn does.

    R² comes from sum(y) and sum(y²) (additive) instead of the mean-centred sum of squares
    (which needs the global mean first); sums are kept in float64 so the cancellation matters only
    for targets whose spread is below ~1e-7 of their magnitude. Constant targets give R² = 1 for a
    perfect fit and 0 otherwise, and fewer than two samples give NaN, both as in sklearn.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reset()

    def reset(self) -> None:
        self._count: Tensor | None = None
        # Per output: sum of squared errors, of absolute errors, of targets, of squared targets.
        self._sums: Tensor | None = None
        self._reset_sync()

    @property
    def num_outputs(self) -> int | None:
        return None if self._sums is None else self._sums.shape[1]

    def update(self, predictions: Tensor, targets: Tensor) -> None:
        self._check_not_synced()
        predictions = _as_columns(predictions.detach())
        targets = _as_columns(targets.detach().to(predictions.device))
        if predictions.shape != targets.shape:
            raise TrainingError(
                f"regression predictions {list(predictions.shape)} and targets "
                f"{list(targets.shape)} differ in shape"
            )
        if self.num_outputs not in (None, predictions.shape[1]):
            raise TrainingError(
                f"regression metrics started with {self.num_outputs} output(s), this batch has "
                f"{predictions.shape[1]}"
            )
        dtype = _accumulator_dtype(predictions.device)
        predictions, targets = predictions.to(dtype), targets.to(dtype)
        sums, count = self._allocate(predictions.shape[1], predictions.device)
        errors = predictions - targets
        batch_sums = torch.stack(
            [errors.square().sum(0), errors.abs().sum(0), targets.sum(0), targets.square().sum(0)]
        )
        sums += batch_sums
        count += predictions.shape[0]

    def state_tensors(self) -> list[Tensor]:
        if self._sums is None or self._count is None:
            return []
        return [self._count, self._sums]

    def _prepare_sync(self, process_group: dist.ProcessGroup | None) -> None:
        # A rank that saw no batch does not know the number of outputs; the others tell it, so
        # that every rank reduces tensors of the same shape (a mismatch would hang the job).
        width = torch.tensor([self.num_outputs or 0], dtype=torch.int64)
        _all_reduce_(width, process_group, dist.ReduceOp.MAX)
        if self._sums is None and int(width) > 0:
            self._allocate(int(width), torch.device("cpu"))

    def compute(self) -> dict[str, float]:
        if self._sums is None or self._count is None or float(self._count) == 0:
            raise TrainingError(
                "regression metrics were computed before any sample was seen",
                hint="Check that the data loader of this split yields at least one batch.",
            )
        count = float(self._count)
        squared_errors, absolute_errors, target_sums, target_squares = self._sums.cpu().double()
        mse = squared_errors / count
        return {
            "mse": _item(mse.mean()),
            "rmse": _item(mse.sqrt().mean()),
            "mae": _item((absolute_errors / count).mean()),
            "r2": _r2(squared_errors, target_sums, target_squares, count),
        }

    def _allocate(self, width: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """The (sums, count) accumulators on ``device``, created at the first batch."""
        if self._sums is None or self._count is None:
            dtype = _accumulator_dtype(device)
            self._sums = torch.zeros(4, width, dtype=dtype, device=device)
            self._count = torch.zeros((), dtype=dtype, device=device)
        else:
            self._sums = self._sums.to(device)
            self._count = self._count.to(device)
        return self._sums, self._count


class AverageMeter(SyncedMetric):
    """A running average weighted by batch size, e.g. of the loss: ``update(loss, n=len(batch))``.

    ``value`` may be a 0-d tensor on the GPU: it is added there, so logging a loss every batch
    does not wait for the device. ``avg`` is NaN before the first update.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.reset()

    def reset(self) -> None:
        self._total = torch.zeros((), dtype=torch.float64)
        self._count = torch.zeros((), dtype=torch.float64)
        self._reset_sync()

    def update(self, value: float | Tensor, n: int = 1) -> None:
        self._check_not_synced()
        if n < 0:
            raise TrainingError(f"AverageMeter {self.name!r}: n must be >= 0, got {n}")
        if isinstance(value, Tensor):
            if value.numel() != 1:
                raise TrainingError(
                    f"AverageMeter {self.name!r} takes one number per update, "
                    f"got a tensor of shape {list(value.shape)}",
                    hint="Reduce the tensor first, e.g. loss.mean().",
                )
            dtype = _accumulator_dtype(value.device)
            self._total = self._total.to(value.device, dtype)
            self._count = self._count.to(value.device, dtype)
            self._total += value.detach().reshape(()).to(dtype) * n
        else:
            self._total += float(value) * n
        self._count += n

    def state_tensors(self) -> list[Tensor]:
        return [self._total, self._count]

    # ``sum`` and ``count`` are settable so that a checkpoint taken mid-epoch can restore them.
    @property
    def sum(self) -> float:
        return float(self._total)

    @sum.setter
    def sum(self, value: float) -> None:
        self._total = torch.tensor(float(value), dtype=torch.float64)

    @property
    def count(self) -> float:
        return float(self._count)

    @count.setter
    def count(self, value: float) -> None:
        self._count = torch.tensor(float(value), dtype=torch.float64)

    @property
    def avg(self) -> float:
        count = self.count
        return self.sum / count if count > 0 else math.nan


def metrics_for(
    task: str, num_classes: int | None, class_names: list[str] | None = None
) -> ClassificationMetrics | RegressionMetrics:
    """The metrics of an mlp-models task: binary, multiclass or regression."""
    if task == "binary":
        if num_classes not in (None, 2):
            raise ConfigError(
                f"task 'binary' has 2 classes; given num_classes={num_classes!r}",
                hint="Use task 'multiclass' for more than two classes.",
            )
        return ClassificationMetrics(2, class_names)
    if task == "multiclass":
        if num_classes is None:
            raise ConfigError("task 'multiclass' needs num_classes (an integer >= 2)")
        return ClassificationMetrics(num_classes, class_names)
    if task == "regression":
        if num_classes is not None or class_names is not None:
            raise ConfigError(
                "task 'regression' has no classes; given "
                f"num_classes={num_classes!r}, class_names={class_names!r}"
            )
        return RegressionMetrics()
    raise ConfigError(f"unknown task {task!r}; expected one of {sorted(METRIC_NAMES)}")


def monitor_names(task: str) -> list[str]:
    """Every ``{split}.{metric}`` name a trainer can monitor for ``task``, losses first."""
    if task not in METRIC_NAMES:
        raise ConfigError(f"unknown task {task!r}; expected one of {sorted(METRIC_NAMES)}")
    return [f"{split}.{name}" for split in SPLITS for name in ("loss", *METRIC_NAMES[task])]


def check_monitor(monitor: str, task: str) -> None:
    """Raise a ConfigError listing the valid names when ``monitor`` is not one of them."""
    valid = monitor_names(task)
    if monitor not in valid:
        raise ConfigError(
            f"cannot monitor {monitor!r} for task {task!r}; valid names: {', '.join(valid)}",
            hint="Monitor one of the names listed, e.g. 'val.loss'.",
        )


def _roc_auc(scores: Tensor, positives: Tensor) -> float:
    # Mann-Whitney U: the chance that a random positive outranks a random negative, ties
    # counting one half -- the area under the ROC curve, exactly as sklearn's trapezoids give.
    positive_count = int(positives.sum())
    negative_count = positives.numel() - positive_count
    if positive_count == 0 or negative_count == 0:
        return math.nan
    ranks = _average_ranks(scores.cpu().double())
    positive_rank_sum = float(ranks[positives.cpu()].sum())
    u_statistic = positive_rank_sum - positive_count * (positive_count + 1) / 2
    return u_statistic / (positive_count * negative_count)


def _average_ranks(values: Tensor) -> Tensor:
    """1-based ranks of ``values``, tied values sharing the mean of their ranks."""
    _, group_of, group_sizes = torch.unique(
        values, sorted=True, return_inverse=True, return_counts=True
    )
    last_rank = group_sizes.cumsum(0).double()
    mean_rank = last_rank - (group_sizes.double() - 1) / 2
    return mean_rank[group_of]


def _r2(squared_errors: Tensor, target_sums: Tensor, target_squares: Tensor, count: float) -> float:
    if count < 2:
        return math.nan
    total_squares = (target_squares - target_sums.square() / count).clamp(min=0)
    constant = total_squares <= _CONSTANT_TARGET_TOLERANCE * target_squares
    perfect = squared_errors == 0
    scores = torch.where(
        constant,
        perfect.double(),
        1 - squared_errors / torch.where(constant, torch.ones_like(total_squares), total_squares),
    )
    return _item(scores.mean())


def _as_columns(values: Tensor) -> Tensor:
    if values.dim() == 1:
        return values.unsqueeze(1)
    if values.dim() == 2:
        return values
    raise TrainingError(
        f"regression values must have shape [batch] or [batch, outputs], got {list(values.shape)}"
    )


def _safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator, and 0 where the denominator is 0 (sklearn's zero_division=0)."""
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, numerator / safe, torch.zeros_like(numerator))


def _item(value: Tensor) -> float:
    return float(value.item())


def _accumulator_dtype(device: torch.device) -> torch.dtype:
    # float64 keeps sums exact enough over millions of samples; Apple's MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _collective_device(process_group: dist.ProcessGroup | None) -> torch.device:
    # NCCL reduces CUDA tensors only; gloo (and a mixed "cpu:gloo,cuda:nccl") handles CPU ones.
    if dist.get_backend(process_group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce_(
    tensor: Tensor, process_group: dist.ProcessGroup | None, op: dist.ReduceOp.RedOpType
) -> None:
    """All-reduce ``tensor`` in place, through the device the backend needs."""
    device = _collective_device(process_group)
    if tensor.device == device:
        dist.all_reduce(tensor, op=op, group=process_group)
        return
    moved = tensor.to(device)
    dist.all_reduce(moved, op=op, group=process_group)
    tensor.copy_(moved)


def _all_reduce_sum_(tensor: Tensor, process_group: dist.ProcessGroup | None) -> None:
    _all_reduce_(tensor, process_group, dist.ReduceOp.SUM)


def _all_gather_rows(rows: Tensor, process_group: dist.ProcessGroup | None) -> Tensor:
    """Concatenate ``rows`` of every rank; ranks may hold different numbers of rows."""
    device = _collective_device(process_group)
    world_size = dist.get_world_size(process_group)
    local = rows.to(device)
    length = torch.tensor([local.shape[0]], dtype=torch.int64, device=device)
    lengths = [torch.zeros_like(length) for _ in range(world_size)]
    dist.all_gather(lengths, length, group=process_group)
    counts = [int(item) for item in lengths]
    # all_gather moves equal shapes only: pad every rank to the longest, then cut the padding.
    padded = local.new_zeros((max(counts), *local.shape[1:]))
    padded[: local.shape[0]] = local
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded, group=process_group)
    return torch.cat([part[:count] for part, count in zip(gathered, counts)]).to(rows.device)
