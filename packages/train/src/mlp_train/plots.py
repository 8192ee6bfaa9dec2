"""PNG plots of a run: training curves, a confusion matrix, regression residuals.

Figures are built as ``matplotlib.figure.Figure`` on an Agg canvas, never through pyplot: pyplot
keeps global figure state and may pick a GUI backend, neither of which a training process (or a
thread of one) wants. Each plot is rendered to bytes first and then written atomically, so a run
folder never holds half a PNG.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mlp_core.errors import TrainingError
from mlp_core.files import atomic_write_bytes

DPI = 100
# Beyond this many classes the count in every cell is unreadable; the colours still tell.
MAX_ANNOTATED_CLASSES = 30
_SPLIT_STYLES = {"train": "--", "val": "-"}


def plot_training_curves(
    history: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]
) -> Path:
    """Write :func:`training_curves_figure` of ``history`` to ``path`` as a PNG."""
    return _save(training_curves_figure(history), path)


def training_curves_figure(history: Sequence[Mapping[str, Any]]) -> Figure:
    """Losses in one panel, every other ``<split>.<metric>`` in a second, against the epoch.

    Rows are the per-epoch records a trainer logs (``{"epoch": 0, "train.loss": 0.7, ...}``).
    Keys without a split prefix (``epoch``, ``lr``, timings) are not plotted: their scales have
    nothing in common with the metrics'. A value missing from some rows leaves a gap.
    """
    if not history:
        raise TrainingError(
            "cannot plot training curves: the history has no epochs",
            hint="Plot after at least one epoch has finished.",
        )
    epochs = [_epoch_of(row, index) for index, row in enumerate(history)]
    series = _metric_series(history)
    if not series:
        keys = sorted({key for row in history for key in row})
        raise TrainingError(
            f"cannot plot training curves: no '<split>.<metric>' numbers in the history (keys: {keys})",
            hint="Log metrics under names such as 'train.loss' or 'val.accuracy'.",
        )
    losses = {name: values for name, values in series.items() if _metric_of(name) == "loss"}
    others = {name: values for name, values in series.items() if name not in losses}
    panels = [(title, group) for title, group in (("loss", losses), ("metrics", others)) if group]

    figure = _new_figure(width=6.0 * len(panels), height=4.5)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    metric_colours = _colours_by_metric(series)
    for axis, (title, group) in zip(axes, panels):
        for name, values in group.items():
            split = name.split(".", 1)[0]
            axis.plot(
                epochs,
                values,
                linestyle=_SPLIT_STYLES.get(split, "-."),
                marker="o",
                markersize=3,
                color=metric_colours[_metric_of(name)],
                label=name,
            )
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    return figure


def plot_confusion_matrix(
    matrix: Any, class_names: Sequence[str], path: str | os.PathLike[str]
) -> Path:
    """Counts in each cell, coloured by the fraction of the true class (row) they hold.

    Colouring by row fraction rather than by count keeps a rare class's mistakes visible next to
    a frequent class's hits.
    """
    counts = _as_array(matrix)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] == 0:
        raise TrainingError(
            f"a confusion matrix must be square and non-empty, got shape {list(counts.shape)}"
        )
    if len(class_names) != counts.shape[0]:
        raise TrainingError(
            f"{len(class_names)} class names for a {counts.shape[0]}x{counts.shape[0]} "
            f"confusion matrix: {list(class_names)!r}",
            hint="Give one name per class, in class-index order.",
        )
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise TrainingError("a confusion matrix holds counts: finite numbers >= 0")
    size = counts.shape[0]
    row_totals = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(
        counts, row_totals, out=np.zeros(counts.shape, dtype=np.float64), where=row_totals > 0
    )

    side = min(max(4.5, 0.55 * size + 2.5), 24.0)
    figure = _new_figure(width=side + 1.0, height=side)
    axis = figure.subplots()
    image = axis.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axis, label="fraction of the true class")
    names = [str(name) for name in class_names]
    # Long or many names collide on the x axis unless they are slanted.
    slanted = size > 4 or max(len(name) for name in names) > 8
    axis.set_xticks(
        range(size),
        labels=names,
        rotation=45 if slanted else 0,
        ha="right" if slanted else "center",
    )
    axis.set_yticks(range(size), labels=names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    if size <= MAX_ANNOTATED_CLASSES:
        _annotate_counts(axis, counts, fractions)
    return _save(figure, path)


def plot_residuals(predictions: Any, targets: Any, path: str | os.PathLike[str]) -> Path:
    """Residuals (target - prediction) against the prediction, and their histogram.

    Takes arrays or tensors of shape [N] or [N, outputs]; each output gets its own colour.
    """
    predicted = _as_columns(_as_array(predictions), "predictions")
    actual = _as_columns(_as_array(targets), "targets")
    if predicted.shape != actual.shape:
        raise TrainingError(
            f"predictions {list(predicted.shape)} and targets {list(actual.shape)} differ in shape"
        )
    if predicted.shape[0] == 0:
        raise TrainingError("cannot plot residuals of zero samples")
    not_finite = int(
        np.count_nonzero(~np.isfinite(predicted)) + np.count_nonzero(~np.isfinite(actual))
    )
    if not_finite:
        raise TrainingError(
            f"cannot plot residuals: {not_finite} prediction/target values are NaN or infinite",
            hint="A model that predicts NaN has diverged; lower the learning rate.",
        )
    residuals = actual - predicted
    outputs = residuals.shape[1]

    figure = _new_figure(width=11.0, height=4.5)
    scatter_axis, histogram_axis = figure.subplots(1, 2)
    bins = min(50, max(10, math.isqrt(residuals.shape[0])))
    for output in range(outputs):
        label = f"output {output}" if outputs > 1 else None
        colour = f"C{output % 10}"
        scatter_axis.scatter(
            predicted[:, output], residuals[:, output], s=8, alpha=0.6, color=colour, label=label
        )
        histogram_axis.hist(residuals[:, output], bins=bins, alpha=0.6, color=colour, label=label)
    scatter_axis.axhline(0.0, color="black", linewidth=1)
    scatter_axis.set_xlabel("predicted")
    scatter_axis.set_ylabel("residual (target - predicted)")
    scatter_axis.set_title("residuals vs predicted")
    histogram_axis.axvline(0.0, color="black", linewidth=1)
    histogram_axis.set_xlabel("residual")
    histogram_axis.set_ylabel("samples")
    histogram_axis.set_title("residual distribution")
    for axis in (scatter_axis, histogram_axis):
        axis.grid(alpha=0.3)
        if outputs > 1:
            axis.legend(fontsize="small")
    return _save(figure, path)


def _new_figure(*, width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | os.PathLike[str]) -> Path:
    buffer = BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return atomic_write_bytes(path, buffer.getvalue())


def _metric_series(history: Sequence[Mapping[str, Any]]) -> dict[str, list[float]]:
    """``<split>.<metric>`` name -> one value per row (NaN where a row lacks it), first-seen order."""
    names: dict[str, None] = {}
    for row in history:
        for key, value in row.items():
            if "." in key and _is_number(value):
                names.setdefault(key)
    return {
        name: [float(row[name]) if _is_number(row.get(name)) else math.nan for row in history]
        for name in names
    }


def _colours_by_metric(series: Mapping[str, list[float]]) -> dict[str, str]:
    # One colour per metric, shared by its splits, so train and val of a metric read as a pair.
    metrics = dict.fromkeys(_metric_of(name) for name in series)
    return {metric: f"C{index % 10}" for index, metric in enumerate(metrics)}


def _metric_of(name: str) -> str:
    return name.split(".", 1)[1]


def _epoch_of(row: Mapping[str, Any], index: int) -> float:
    epoch = row.get("epoch", index)
    if not _is_number(epoch):
        raise TrainingError(f"history row {index} has a non-numeric epoch: {epoch!r}")
    return float(epoch)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _annotate_counts(axis: Axes, counts: np.ndarray, fractions: np.ndarray) -> None:
    size = counts.shape[0]
    font_size = 10 if size <= 10 else 7
    for row in range(size):
        for column in range(size):
            count = counts[row, column]
            text = f"{int(count)}" if float(count).is_integer() else f"{count:.3g}"
            # White on the dark end of the colour map, black on the light end.
            colour = "white" if fractions[row, column] > 0.5 else "black"
            axis.text(column, row, text, ha="center", va="center", color=colour, fontsize=font_size)


def _as_array(values: Any) -> np.ndarray:
    # Tensors may live on a GPU; move them to the CPU without importing torch here.
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TrainingError(f"expected an array of numbers, got {type(values).__name__}") from error


def _as_columns(values: np.ndarray, what: str) -> np.ndarray:
    if values.ndim == 1:
        return values[:, None]
    if values.ndim == 2:
        return values
    raise TrainingError(f"{what} must have shape [N] or [N, outputs], got {list(values.shape)}")
