"""Does the exported pipeline reproduce the run's recorded quality on the run's own data?

Parity compares two implementations of the same recorded preprocessing, so it cannot notice
that the recorded numbers themselves are wrong (a preprocessing.json edited, damaged or taken
from another run): both sides would agree on the wrong inputs. This check can. It scores the
ONNX pipeline on the labelled rows of the run's data file and compares the result with the
validation and test metrics the run recorded; an exported pipeline that is clearly worse fails
the export. All rows are scored (training rows included: the split is mlp-data's business), so
the score is expected at or above the recorded ones, and the margin only absorbs the noise of
small validation sets.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mlp_core.tabular_spec import TabularPreprocessing, category_key
from mlp_serve.errors import BundleError

ACCURACY_MARGIN = 0.15  # accuracy may be this much below the worst recorded split
RMSE_FACTOR = 2.0  # rmse may be this many times the worst recorded split
MIN_ROWS = 20


def reproduce(
    pipeline: TabularPreprocessing,
    outputs: np.ndarray,
    targets: list[str] | None,
    metrics: dict[str, float],
    *,
    source: str,
) -> dict[str, Any]:
    """The check's record for the manifest; raises :class:`BundleError` when it fails."""
    if not targets or len(targets) < MIN_ROWS:
        return {"checked": False, "reason": f"fewer than {MIN_ROWS} labelled rows of data found"}
    outputs = outputs[: len(targets)]
    if pipeline.task == "regression":
        return _regression(outputs, targets, metrics, source)
    return _classification(pipeline, outputs, targets, metrics, source)


def _classification(pipeline, outputs, targets, metrics, source) -> dict[str, Any]:
    classes = list(pipeline.target_classes or [])
    index = {name: i for i, name in enumerate(classes)}
    known = [(row, _class_index(value, index)) for row, value in enumerate(targets)]
    known = [(row, label) for row, label in known if label is not None]
    recorded = {k: metrics[k] for k in ("val.accuracy", "test.accuracy") if k in metrics}
    if len(known) < MIN_ROWS or not recorded:
        return {"checked": False, "reason": "no recorded accuracy or too few labelled rows"}
    rows = np.array([row for row, _ in known])
    labels = np.array([label for _, label in known])
    accuracy = float(np.mean(outputs[rows].argmax(axis=1) == labels))
    floor = min(recorded.values()) - ACCURACY_MARGIN
    record = {
        "checked": True,
        "rows": len(rows),
        "source": source,
        "metric": "accuracy",
        "value": accuracy,
        "recorded": recorded,
        "minimum": floor,
        "passed": accuracy >= floor,
    }
    if not record["passed"]:
        raise BundleError(
            f"the exported pipeline does not reproduce the run: its accuracy on {len(rows)} "
            f"labelled rows of {source} is {accuracy:.3f}, while the run recorded "
            + ", ".join(f"{k} {v:.3f}" for k, v in recorded.items())
            + f" (minimum accepted {floor:.3f})",
            hint="The run's preprocessing.json does not match its model (edited, damaged or "
            "from another run); export from an intact run folder. Nothing was written.",
        )
    return record


def _regression(outputs, targets, metrics, source) -> dict[str, Any]:
    values = np.array([_float(t) for t in targets])
    keep = np.isfinite(values)
    recorded = {k: metrics[k] for k in ("val.rmse", "test.rmse") if k in metrics}
    if keep.sum() < MIN_ROWS or not recorded or outputs.ndim != 1:
        return {"checked": False, "reason": "no recorded rmse, too few rows or several outputs"}
    rmse = float(np.sqrt(np.mean((outputs[keep].astype(np.float64) - values[keep]) ** 2)))
    ceiling = max(recorded.values()) * RMSE_FACTOR + 1e-12
    record = {
        "checked": True,
        "rows": int(keep.sum()),
        "source": source,
        "metric": "rmse",
        "value": rmse,
        "recorded": recorded,
        "maximum": ceiling,
        "passed": rmse <= ceiling,
    }
    if not record["passed"]:
        raise BundleError(
            f"the exported pipeline does not reproduce the run: its rmse on {int(keep.sum())} "
            f"rows of {source} is {rmse:.4g}, while the run recorded "
            + ", ".join(f"{k} {v:.4g}" for k, v in recorded.items()),
            hint="The run's preprocessing.json does not match its model; export from an intact "
            "run folder. Nothing was written.",
        )
    return record


def _class_index(text: str, index: dict[str, int]) -> int | None:
    """The class of a target read as text: by its text, else by the key mlp-data gives the
    number it spells (a whole float such as "2007.0" is the class "2007")."""
    if text in index:
        return index[text]
    key = category_key(_float(text))
    return None if key is None else index.get(key)


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan
