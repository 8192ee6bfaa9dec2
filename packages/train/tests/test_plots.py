"""Each plot writes a real, non-blank PNG atomically; bad input is a clear TrainingError."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlp_core.errors import TrainingError
from mlp_train.metrics import ClassificationMetrics
from mlp_train.plots import (
    DPI,
    plot_confusion_matrix,
    plot_residuals,
    plot_training_curves,
    training_curves_figure,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_png(path: Path) -> np.ndarray:
    """The RGB pixels of ``path`` after checking it is a whole, non-blank PNG."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()  # decodes every chunk: a truncated file fails here
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[0] >= 300 and pixels.shape[1] >= 300
    packed = pixels.astype(np.uint32)
    distinct_colours = np.unique((packed[..., 0] << 16) | (packed[..., 1] << 8) | packed[..., 2])
    assert len(distinct_colours) > 10  # lines, text and fills, not a blank canvas
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    return pixels


def history_rows(epochs: int) -> list[dict]:
    return [
        {
            "epoch": epoch,
            "train.loss": 1.0 / (epoch + 1),
            "val.loss": 1.2 / (epoch + 1),
            "val.accuracy": 0.5 + 0.1 * epoch,
            "val.f1_macro": 0.4 + 0.1 * epoch,
            "lr": 0.1,
        }
        for epoch in range(epochs)
    ]


def test_training_curves_draw_a_loss_panel_and_a_metric_panel(tmp_path):
    path = plot_training_curves(history_rows(4), tmp_path / "curves.png")
    assert path == tmp_path / "curves.png"
    pixels = read_png(path)
    assert pixels.shape[1] == 2 * 6 * DPI  # two panels side by side

    losses_only = tmp_path / "losses" / "curves.png"
    only_losses = [{key: row[key] for key in ("epoch", "train.loss")} for row in history_rows(3)]
    assert read_png(plot_training_curves(only_losses, losses_only)).shape[1] == 6 * DPI


def test_training_curves_leave_gaps_where_a_row_lacks_a_metric(tmp_path):
    rows = history_rows(5)
    for row in rows[1::2]:  # validation every other epoch
        del row["val.loss"], row["val.accuracy"], row["val.f1_macro"]

    figure = training_curves_figure(rows)
    lines = {line.get_label(): line for axis in figure.axes for line in axis.get_lines()}
    assert set(lines) == {"train.loss", "val.loss", "val.accuracy", "val.f1_macro"}
    for name, line in lines.items():
        epochs = np.asarray(line.get_xdata(), dtype=float)
        values = np.asarray(line.get_ydata(), dtype=float)
        # Every epoch keeps its place on the x axis; a missing value is NaN there, which
        # matplotlib draws as a break in the line (dropping or interpolating it would join the
        # neighbours).
        assert epochs.tolist() == [0, 1, 2, 3, 4], name
        missing = np.isnan(values)
        if name.startswith("val."):
            assert missing.tolist() == [False, True, False, True, False], name
            assert values[~missing].tolist() == [rows[i][name] for i in (0, 2, 4)]
        else:
            assert not missing.any(), name

    path = tmp_path / "curves.png"
    path.write_bytes(b"an older plot")
    read_png(plot_training_curves(rows, path))


def test_training_curves_reject_an_empty_or_metric_free_history(tmp_path):
    with pytest.raises(TrainingError, match="history has no epochs"):
        plot_training_curves([], tmp_path / "curves.png")
    with pytest.raises(TrainingError, match=r"no '<split>.<metric>' numbers.*'lr'"):
        plot_training_curves([{"epoch": 0, "lr": 0.1}], tmp_path / "curves.png")
    with pytest.raises(TrainingError, match="non-numeric epoch"):
        plot_training_curves([{"epoch": "first", "train.loss": 1.0}], tmp_path / "curves.png")
    assert not (tmp_path / "curves.png").exists()


def test_confusion_matrix_from_classification_metrics(tmp_path):
    metric = ClassificationMetrics(3, ["adelie", "chinstrap", "gentoo"])
    generator = torch.Generator().manual_seed(0)
    targets = torch.randint(3, (120,), generator=generator)
    logits = torch.randn(120, 3, generator=generator)
    logits[torch.arange(120), targets] += 2
    metric.update(logits, targets)

    path = plot_confusion_matrix(metric.confusion_matrix(), metric.class_names, tmp_path / "cm.png")
    pixels = read_png(path)
    # The diagonal holds most of each row, so its cells take the dark end of the colour map.
    dark_blue = (pixels[..., 2] > 80) & (pixels[..., 0] < 40) & (pixels[..., 1] < 80)
    assert dark_blue.sum() > 10_000  # the colour bar alone holds about 900 such pixels


def test_confusion_matrix_of_many_classes_and_empty_rows(tmp_path):
    counts = np.zeros((40, 40), dtype=np.int64)
    counts[np.arange(39), np.arange(39)] = 5  # class 39 never occurs: its row is all zeros
    path = plot_confusion_matrix(counts, [f"class {i}" for i in range(40)], tmp_path / "cm.png")
    pixels = read_png(path)
    assert pixels.shape[0] <= 24 * DPI


def test_confusion_matrix_rejects_bad_shapes_and_names(tmp_path):
    target = tmp_path / "cm.png"
    with pytest.raises(TrainingError, match="2 class names for a 3x3"):
        plot_confusion_matrix(np.eye(3), ["a", "b"], target)
    with pytest.raises(TrainingError, match="square"):
        plot_confusion_matrix(np.ones((2, 3)), ["a", "b"], target)
    with pytest.raises(TrainingError, match=">= 0"):
        plot_confusion_matrix(np.array([[1, -1], [0, 2]]), ["a", "b"], target)
    assert not target.exists()


def test_residuals_of_one_output(tmp_path):
    rng = np.random.default_rng(0)
    targets = rng.normal(10, 3, 200)
    predictions = targets + rng.normal(0, 1, 200)
    read_png(plot_residuals(predictions, targets, tmp_path / "residuals.png"))


def test_residuals_of_several_outputs_from_tensors(tmp_path):
    generator = torch.Generator().manual_seed(1)
    targets = torch.randn(150, 3, generator=generator)
    predictions = targets + 0.3 * torch.randn(150, 3, generator=generator)
    pixels = read_png(plot_residuals(predictions, targets, tmp_path / "residuals.png"))
    assert pixels.shape[1] == 11 * DPI


def test_residuals_reject_mismatched_empty_or_nan_input(tmp_path):
    target = tmp_path / "residuals.png"
    with pytest.raises(TrainingError, match="differ in shape"):
        plot_residuals(np.zeros(5), np.zeros(6), target)
    with pytest.raises(TrainingError, match="zero samples"):
        plot_residuals(np.zeros(0), np.zeros(0), target)
    with pytest.raises(TrainingError, match="1 prediction/target values are NaN"):
        plot_residuals(np.array([1.0, np.nan]), np.array([1.0, 2.0]), target)
    with pytest.raises(TrainingError, match=r"\[N\] or \[N, outputs\]"):
        plot_residuals(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), target)
    assert not target.exists()
