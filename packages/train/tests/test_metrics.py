"""The metrics against scikit-learn on the same predictions, batched and synced over real ranks."""

from __future__ import annotations

import json
import math
import socket
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mlp_core.errors import ConfigError, TrainingError
from mlp_train.metrics import (
    METRIC_NAMES,
    AverageMeter,
    ClassificationMetrics,
    RegressionMetrics,
    check_monitor,
    metrics_for,
    monitor_names,
)

TOLERANCE = 1e-6
NEVER = -1e9  # a logit that never wins the argmax


def skm():
    """scikit-learn's metrics, the reference. Imported on first use because the DDP test's
    spawned workers import this module too, and sklearn would add seconds to each start-up."""
    import sklearn.metrics

    return sklearn.metrics


def classification_data(
    seed: int, size: int, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(size, num_classes, generator=generator, dtype=torch.float64) * 2
    targets = torch.randint(num_classes, (size,), generator=generator)
    # Better than chance, so that no score sits at 0 by accident.
    logits[torch.arange(size), targets] += 1.5
    return logits, targets


def sklearn_classification(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    y_true = targets.numpy()
    y_pred = logits.argmax(1).numpy()
    expected = {"accuracy": skm().accuracy_score(y_true, y_pred)}
    if logits.shape[1] == 2:
        precision, recall, f1, _ = skm().precision_recall_fscore_support(
            y_true, y_pred, average="binary", zero_division=0
        )
        expected |= {"precision": precision, "recall": recall, "f1": f1}
    for average in ("macro", "micro", "weighted"):
        precision, recall, f1, _ = skm().precision_recall_fscore_support(
            y_true, y_pred, average=average, zero_division=0
        )
        expected |= {
            f"precision_{average}": precision,
            f"recall_{average}": recall,
            f"f1_{average}": f1,
        }
    if logits.shape[1] == 2:
        expected["roc_auc"] = skm().roc_auc_score(y_true, torch.softmax(logits, 1)[:, 1].numpy())
    task = "binary" if logits.shape[1] == 2 else "multiclass"
    return {name: expected[name] for name in METRIC_NAMES[task]}


def update_in_batches(metric, outputs, targets, seed: int) -> None:
    """Feed ``metric`` in batches of random sizes, as a data loader with a ragged tail would."""
    generator = torch.Generator().manual_seed(seed + 1000)
    start = 0
    while start < len(targets):
        stop = start + int(torch.randint(1, 40, (1,), generator=generator))
        metric.update(outputs[start:stop], targets[start:stop])
        start = stop


def assert_close(actual: dict[str, float], expected: dict[str, float]) -> None:
    assert list(actual) == list(expected)
    for name, value in expected.items():
        assert actual[name] == pytest.approx(value, abs=TOLERANCE), name


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("num_classes", [2, 3, 7])
def test_classification_matches_sklearn_batched_and_one_shot(seed, num_classes):
    logits, targets = classification_data(seed, 301, num_classes)
    expected = sklearn_classification(logits, targets)

    one_shot = ClassificationMetrics(num_classes)
    one_shot.update(logits, targets)
    batched = ClassificationMetrics(num_classes)
    update_in_batches(batched, logits, targets, seed)

    assert_close(one_shot.compute(), expected)
    assert_close(batched.compute(), expected)
    labels = list(range(num_classes))
    sk_matrix = skm().confusion_matrix(targets.numpy(), logits.argmax(1).numpy(), labels=labels)
    np.testing.assert_array_equal(batched.confusion_matrix(), sk_matrix)
    assert batched.confusion_matrix().dtype == np.int64


@pytest.mark.parametrize("seed", [3, 4])
def test_never_predicted_and_absent_classes_follow_sklearn_zero_division(seed):
    # Class 2 occurs in the targets but is never predicted (precision 0/0 -> 0); class 4 occurs
    # in neither, so sklearn's macro average leaves it out; class 3 is predicted but never true.
    size = 200
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(size, 5, generator=generator, dtype=torch.float64)
    logits[:, [2, 4]] = NEVER
    targets = torch.tensor([0, 1, 2])[torch.randint(3, (size,), generator=generator)]
    metric = ClassificationMetrics(5, ["a", "b", "c", "d", "e"])
    update_in_batches(metric, logits, targets, seed)

    result = metric.compute()
    assert_close(result, sklearn_classification(logits, targets))
    per_class = metric.per_class()
    precision, recall, f1, support = skm().precision_recall_fscore_support(
        targets.numpy(), logits.argmax(1).numpy(), labels=range(5), zero_division=0
    )
    assert list(per_class) == ["a", "b", "c", "d", "e"]
    for index, name in enumerate(per_class):
        assert per_class[name]["precision"] == pytest.approx(precision[index], abs=TOLERANCE)
        assert per_class[name]["recall"] == pytest.approx(recall[index], abs=TOLERANCE)
        assert per_class[name]["f1"] == pytest.approx(f1[index], abs=TOLERANCE)
        assert per_class[name]["support"] == support[index]
    assert per_class["c"]["precision"] == 0.0 and per_class["c"]["support"] > 0


def test_binary_probabilities_and_logits_give_the_same_metrics():
    logits, targets = classification_data(5, 257, 2)
    from_logits = ClassificationMetrics(2)
    from_logits.update(logits.float(), targets)
    from_probabilities = ClassificationMetrics(2)
    from_probabilities.update(torch.softmax(logits, 1).float(), targets)
    assert_close(from_probabilities.compute(), from_logits.compute())


def test_roc_auc_counts_tied_scores_as_sklearn_does():
    generator = torch.Generator().manual_seed(6)
    positive = (torch.rand(500, generator=generator) * 10).round() / 10  # 11 distinct scores
    probabilities = torch.stack([1 - positive, positive], dim=1)
    targets = (torch.rand(500, generator=generator) < positive).long()
    metric = ClassificationMetrics(2)
    update_in_batches(metric, probabilities, targets, 6)
    expected = skm().roc_auc_score(targets.numpy(), positive.numpy())
    assert metric.compute()["roc_auc"] == pytest.approx(expected, abs=TOLERANCE)


def test_roc_auc_is_nan_when_the_targets_hold_one_class():
    logits, _ = classification_data(7, 50, 2)
    metric = ClassificationMetrics(2)
    metric.update(logits, torch.ones(50, dtype=torch.long))
    result = metric.compute()
    assert math.isnan(result["roc_auc"])
    assert result["recall"] == pytest.approx(
        skm().accuracy_score(np.ones(50), logits.argmax(1).numpy()), abs=TOLERANCE
    )


def test_classification_rejects_bad_batches_and_empty_compute():
    metric = ClassificationMetrics(3)
    with pytest.raises(TrainingError, match=r"shape \[batch, 3\]"):
        metric.update(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TrainingError, match="integer class indices"):
        metric.update(torch.zeros(4, 3), torch.zeros(4))
    with pytest.raises(TrainingError, match=r"\[0, 3\)"):
        metric.update(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(TrainingError, match="before any sample"):
        metric.compute()
    with pytest.raises(ConfigError, match="2 class names given for 3 classes"):
        ClassificationMetrics(3, ["x", "y"])
    with pytest.raises(ConfigError, match="integer >= 2"):
        ClassificationMetrics(1)


def test_sync_twice_or_update_after_sync_is_refused_until_reset():
    metric = ClassificationMetrics(2)
    logits, targets = classification_data(8, 20, 2)
    metric.update(logits, targets)
    metric.sync()  # no process group: a no-op on the numbers
    assert int(metric.confusion_matrix().sum()) == 20
    with pytest.raises(TrainingError, match="already synced"):
        metric.sync()
    with pytest.raises(TrainingError, match="after sync"):
        metric.update(logits, targets)
    metric.reset()
    metric.update(logits[:5], targets[:5])
    assert int(metric.confusion_matrix().sum()) == 5
    assert metric.state_tensors()[0].sum() == 5


def regression_data(seed: int, size: int, outputs: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shape = (size,) if outputs == 1 else (size, outputs)
    targets = torch.randn(shape, generator=generator, dtype=torch.float64) * 3 + 10
    predictions = targets + torch.randn(shape, generator=generator, dtype=torch.float64)
    return predictions, targets


def sklearn_regression(predictions: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    y_pred, y_true = predictions.numpy(), targets.numpy()
    return {
        "mse": skm().mean_squared_error(y_true, y_pred),
        "rmse": skm().root_mean_squared_error(y_true, y_pred),
        "mae": skm().mean_absolute_error(y_true, y_pred),
        "r2": skm().r2_score(y_true, y_pred),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("outputs", [1, 3])
def test_regression_matches_sklearn_batched_and_one_shot(seed, outputs):
    predictions, targets = regression_data(seed, 211, outputs)
    expected = sklearn_regression(predictions, targets)
    one_shot = RegressionMetrics()
    one_shot.update(predictions, targets)
    batched = RegressionMetrics()
    update_in_batches(batched, predictions, targets, seed)
    assert_close(one_shot.compute(), expected)
    assert_close(batched.compute(), expected)
    assert batched.num_outputs == outputs


def test_regression_accepts_a_single_output_column_against_flat_targets():
    predictions, targets = regression_data(9, 64, 1)
    metric = RegressionMetrics()
    metric.update(predictions.float().unsqueeze(1), targets.float())
    assert metric.compute()["mse"] == pytest.approx(
        skm().mean_squared_error(targets.numpy(), predictions.float().numpy()), abs=TOLERANCE
    )


def test_regression_constant_targets_and_single_sample_follow_sklearn():
    constant = torch.full((10, 2), 2.0, dtype=torch.float64)
    perfect_on_first = constant.clone()
    perfect_on_first[:, 1] += torch.linspace(-1, 1, 10, dtype=torch.float64)
    metric = RegressionMetrics()
    metric.update(perfect_on_first, constant)
    # Output 0 is a perfect fit of constant targets (1.0), output 1 misses them (0.0).
    assert metric.compute()["r2"] == pytest.approx(
        skm().r2_score(constant.numpy(), perfect_on_first.numpy()), abs=TOLERANCE
    )
    assert metric.compute()["r2"] == pytest.approx(0.5)

    single = RegressionMetrics()
    single.update(torch.tensor([1.0]), torch.tensor([2.0]))
    assert math.isnan(single.compute()["r2"])
    assert single.compute()["mae"] == pytest.approx(1.0)


def test_regression_rejects_mismatched_shapes_and_empty_compute():
    metric = RegressionMetrics()
    with pytest.raises(TrainingError, match="before any sample"):
        metric.compute()
    with pytest.raises(TrainingError, match="differ in shape"):
        metric.update(torch.zeros(4, 2), torch.zeros(4))
    metric.update(torch.zeros(4, 2), torch.zeros(4, 2))
    with pytest.raises(TrainingError, match="started with 2 output"):
        metric.update(torch.zeros(4, 3), torch.zeros(4, 3))
    with pytest.raises(TrainingError, match=r"\[batch\] or \[batch, outputs\]"):
        metric.update(torch.zeros(4, 1, 1), torch.zeros(4, 1, 1))


def test_average_meter_weights_by_batch_size():
    values, sizes = [0.5, 2.0, 1.25], [32, 32, 7]
    meter = AverageMeter("train.loss")
    assert math.isnan(meter.avg)
    meter.update(torch.tensor(values[0]), n=sizes[0])
    meter.update(values[1], n=sizes[1])
    meter.update(torch.tensor([values[2]]), n=sizes[2])
    assert meter.avg == pytest.approx(np.average(values, weights=sizes))
    assert meter.count == sum(sizes)
    assert meter.sum == pytest.approx(sum(v * n for v, n in zip(values, sizes)))
    with pytest.raises(TrainingError, match="one number per update"):
        meter.update(torch.ones(3))
    meter.reset()
    assert meter.count == 0 and math.isnan(meter.avg)


def test_average_meter_resumes_from_a_saved_sum_and_count():
    saved = AverageMeter("train.loss")
    saved.update(0.75, n=10)
    restored = AverageMeter("train.loss")
    restored.sum, restored.count = saved.sum, saved.count
    restored.update(torch.tensor(0.25), n=30)
    assert restored.avg == pytest.approx((0.75 * 10 + 0.25 * 30) / 40)
    assert restored.count == 40


def test_metrics_for_builds_each_task_and_rejects_bad_arguments():
    binary = metrics_for("binary", None, ["no", "yes"])
    assert isinstance(binary, ClassificationMetrics) and binary.num_classes == 2
    assert binary.class_names == ["no", "yes"]
    multiclass = metrics_for("multiclass", 4)
    assert isinstance(multiclass, ClassificationMetrics) and multiclass.class_names[3] == "3"
    assert isinstance(metrics_for("regression", None), RegressionMetrics)
    with pytest.raises(ConfigError, match="unknown task 'ranking'"):
        metrics_for("ranking", None)
    with pytest.raises(ConfigError, match="needs num_classes"):
        metrics_for("multiclass", None)
    with pytest.raises(ConfigError, match="has 2 classes"):
        metrics_for("binary", 3)
    with pytest.raises(ConfigError, match="has no classes"):
        metrics_for("regression", 3)


def test_metric_names_cover_every_model_task_and_match_compute():
    from mlp_core.tasks import TASKS

    assert set(METRIC_NAMES) == set(TASKS)
    logits, targets = classification_data(10, 40, 3)
    for task, num_classes in (("binary", 2), ("multiclass", 3)):
        metric = metrics_for(task, None if task == "binary" else num_classes)
        metric.update(logits[:, :num_classes], targets.clamp(max=num_classes - 1))
        assert list(metric.compute()) == METRIC_NAMES[task]
    regression = metrics_for("regression", None)
    regression.update(*regression_data(10, 40, 1))
    assert list(regression.compute()) == METRIC_NAMES["regression"]


def test_check_monitor_accepts_split_metrics_and_lists_valid_names():
    check_monitor("val.f1_macro", "multiclass")
    check_monitor("train.loss", "regression")
    check_monitor("val.roc_auc", "binary")
    with pytest.raises(ConfigError) as error:
        check_monitor("val.roc_auc", "multiclass")
    assert "val.f1_macro" in str(error.value) and "train.loss" in str(error.value)
    with pytest.raises(ConfigError, match="valid names"):
        check_monitor("test.r2", "regression")
    with pytest.raises(ConfigError, match="valid names"):
        check_monitor("f1_macro", "multiclass")
    with pytest.raises(ConfigError, match="unknown task"):
        check_monitor("val.loss", "segmentation")
    assert monitor_names("regression")[:2] == ["train.loss", "train.mse"]
    assert len(monitor_names("binary")) == 2 * (1 + len(METRIC_NAMES["binary"]))


# --- DDP: two real processes over gloo, each with part of the data -------------------------

SPLIT_AT = 37  # rank 0 gets the first 37 rows, rank 1 the other 63: uneven on purpose


def ddp_inputs() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {
        "binary": classification_data(11, 100, 2),
        "multiclass": classification_data(12, 100, 4),
        "regression": regression_data(13, 100, 2),
    }


def compute_all(metrics: dict, meter: AverageMeter) -> dict:
    return {
        **{task: metric.compute() for task, metric in metrics.items()},
        "confusion": metrics["multiclass"].confusion_matrix().tolist(),
        "meter": [meter.avg, meter.count],
    }


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        # Ranks that disagree on what to reduce would wait 30 minutes by default; fail instead.
        timeout=timedelta(seconds=60),
    )
    try:
        rows = slice(0, SPLIT_AT) if rank == 0 else slice(SPLIT_AT, None)
        metrics = {task: metrics_for(task, None) for task in ("binary", "regression")}
        metrics["multiclass"] = metrics_for("multiclass", 4)
        for task, (outputs, targets) in ddp_inputs().items():
            update_in_batches(metrics[task], outputs[rows], targets[rows], rank)
        meter = AverageMeter("loss")
        meter.update(torch.tensor(float(rank + 1)), n=rows.indices(100)[1] - rows.indices(100)[0])
        # Only rank 1 sees regression data here: rank 0 must learn the width from it.
        late = RegressionMetrics()
        if rank == 1:
            late.update(*regression_data(14, 30, 3))
        for metric in (*metrics.values(), meter, late):
            metric.sync()
        result = compute_all(metrics, meter) | {"late": late.compute()}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sync_over_two_gloo_processes_equals_one_process(tmp_path):
    mp.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)

    metrics = {task: metrics_for(task, None) for task in ("binary", "regression")}
    metrics["multiclass"] = metrics_for("multiclass", 4)
    for task, (outputs, targets) in ddp_inputs().items():
        metrics[task].update(outputs, targets)
    meter = AverageMeter("loss")
    meter.update(1.0, n=SPLIT_AT)
    meter.update(2.0, n=100 - SPLIT_AT)
    late = RegressionMetrics()
    late.update(*regression_data(14, 30, 3))
    expected = compute_all(metrics, meter) | {"late": late.compute()}

    for rank in (0, 1):
        synced = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert synced["confusion"] == expected["confusion"]
        assert synced["meter"] == pytest.approx(expected["meter"])
        for task in ("binary", "multiclass", "regression", "late"):
            assert_close(synced[task], expected[task])
