"""Parity: the torch pipeline and onnxruntime on the same samples, within a stated tolerance.

Tabular samples are raw rows: rows of the run's own data file (read with the csv module) when
it can still be found, plus synthetic rows drawn from the fitted statistics and rows that
exercise the edges (every value missing, unseen categories). The torch side preprocesses them
with :func:`~mlp_serve.export.tabular_reference.reference_inputs` (float64 numpy, mlp-data's
semantics) and runs the model with ``task_predictions``; the ONNX side is fed the same raw
values. Image samples are seeded
random pixels normalised as the evaluation spec says.

The compared quantity is the served output: probabilities for classification, values for
regression (there the difference is scaled by ``max(1, |value|)``, since fp32 is relative).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Before onnxruntime: importing it sets ORT_DISABLE_TELEMETRY=1 (unless the user set it),
# which onnxruntime reads only when it is imported.
import mlp_obs.ort_telemetry  # noqa: F401

# isort: split
import onnxruntime as ort
import torch

from mlp_core.image_spec import ImageEvalSpec
from mlp_core.tabular_spec import TabularPreprocessing
from mlp_models import BaseModel
from mlp_models.tasks import task_predictions
from mlp_serve.bundle import Parity
from mlp_serve.errors import BundleError

# Max abs difference of probabilities (or scaled values) allowed per shipped precision.
TOLERANCES = {"fp32": 1e-4, "fp16": 1e-2, "int8": 0.25}
UNSEEN = "__mlp_unseen_category__"
# What pandas (pyarrow engine) reads as a missing value: the training run saw these as NaN.
NA_TOKENS = frozenset(
    {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
     "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
)  # fmt: skip
MAX_DATA_ROWS = 512
SYNTHETIC_ROWS = 64


@dataclass
class TabularSamples:
    numeric: np.ndarray  # float32 [B, n], NaN = missing
    categorical: np.ndarray  # object [B, k] of str, "" = missing
    targets: list[str] | None  # raw target values of the rows read from the data file
    data_rows: int  # how many of the rows came from the data file (the first ones)
    source: str

    def feeds(self, pipeline: TabularPreprocessing) -> dict[str, np.ndarray]:
        feeds: dict[str, np.ndarray] = {}
        if pipeline.numeric:
            feeds["numeric"] = self.numeric
        if pipeline.categorical:
            feeds["categorical"] = self.categorical
        return feeds

    def __len__(self) -> int:
        return int(self.numeric.shape[0])


def tabular_samples(
    pipeline: TabularPreprocessing,
    data_path: Path | None,
    *,
    delimiter: str = ",",
    seed: int = 0,
) -> TabularSamples:
    numeric_rows: list[list[float]] = []
    categorical_rows: list[list[str]] = []
    targets: list[str] | None = None
    source = "synthetic rows"
    if data_path is not None and data_path.is_file() and data_path.suffix.lower() == ".csv":
        numeric_rows, categorical_rows, targets = _read_csv_rows(pipeline, data_path, delimiter)
        source = f"{len(numeric_rows)} rows of {data_path.name} + synthetic rows"
    data_rows = len(numeric_rows)
    rng = np.random.default_rng(seed)
    for i in range(SYNTHETIC_ROWS):
        numeric_rows.append(
            [float(c.offset + c.scale * rng.standard_normal()) for c in pipeline.numeric]
        )
        categorical_rows.append([_draw_category(rng, c.categories) for c in pipeline.categorical])
        if i % 4 == 0 and pipeline.numeric:  # scattered missing numbers
            numeric_rows[-1][i % len(pipeline.numeric)] = math.nan
    # The edges: everything missing; every category unseen; a whole-number float spelling.
    numeric_rows.append([math.nan] * len(pipeline.numeric))
    categorical_rows.append([""] * len(pipeline.categorical))
    numeric_rows.append([c.offset for c in pipeline.numeric])
    categorical_rows.append([UNSEEN] * len(pipeline.categorical))
    numeric = np.asarray(numeric_rows, dtype=np.float32).reshape(-1, len(pipeline.numeric))
    categorical = np.empty((len(numeric_rows), len(pipeline.categorical)), dtype=object)
    for r, row in enumerate(categorical_rows):
        categorical[r, :] = row
    return TabularSamples(numeric, categorical, targets, data_rows, source)


def _draw_category(rng: np.random.Generator, categories: tuple[str, ...]) -> str:
    choice = int(rng.integers(0, len(categories) + 2))
    if choice == len(categories):
        return ""
    if choice == len(categories) + 1:
        return UNSEEN
    return categories[choice]


def _read_csv_rows(
    pipeline: TabularPreprocessing, path: Path, delimiter: str
) -> tuple[list[list[float]], list[list[str]], list[str] | None]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle, delimiter=delimiter))
    except (OSError, UnicodeDecodeError, csv.Error):
        return [], [], None
    needed = [*pipeline.numeric_names, *pipeline.categorical_names]
    if not rows or any(name not in rows[0] for name in needed):
        return [], [], None
    if len(rows) > MAX_DATA_ROWS:  # evenly spread, deterministic
        picks = np.linspace(0, len(rows) - 1, MAX_DATA_ROWS).round().astype(int)
        rows = [rows[i] for i in picks]
    numeric, categorical = [], []
    for row in rows:
        numeric.append([_number(row[name]) for name in pipeline.numeric_names])
        categorical.append(
            ["" if row[name] in NA_TOKENS else row[name] for name in pipeline.categorical_names]
        )
    target = pipeline.target
    targets = [row.get(target) or "" for row in rows] if target and target in rows[0] else None
    return numeric, categorical, targets


def _number(text: str | None) -> float:
    if text is None or text.strip() in NA_TOKENS:
        return math.nan
    try:
        return float(text)
    except ValueError:
        return math.nan


def image_samples(
    spec: ImageEvalSpec, shape: tuple[int, ...], *, count: int = 16, seed: int = 0
) -> np.ndarray:
    """Seeded random pixels in [0, 255], scaled and normalised as the evaluation spec says."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(count, *shape)).astype(np.float32)
    scale = np.float32(spec.scale)
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(1, -1, 1, 1)
    return ((pixels * scale - mean) / std).astype(np.float32)


# -- running and comparing ---------------------------------------------------------------------


def torch_outputs(model: BaseModel, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """What the trained model serves for these network inputs: probabilities or values."""
    spec = model.signature()
    tensors = tuple(torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in spec.input_names)
    model.eval()
    with torch.no_grad():
        return task_predictions(model.task, model(*tensors)).numpy().astype(np.float32)


def onnx_session(model_bytes: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def run_onnx(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return {name: np.asarray(out) for name, out in zip(names, session.run(names, feeds))}


def served(outputs: dict[str, np.ndarray]) -> np.ndarray:
    return outputs["predictions"] if "predictions" in outputs else outputs["probabilities"]


def difference(reference: np.ndarray, candidate: np.ndarray, *, regression: bool) -> float:
    if reference.shape != candidate.shape:
        return math.inf
    if not (np.all(np.isfinite(reference)) and np.all(np.isfinite(candidate))):
        return math.inf
    gap = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    if regression:
        gap = gap / np.maximum(1.0, np.abs(reference.astype(np.float64)))
    return float(gap.max()) if gap.size else 0.0


def check_parity(
    reference: np.ndarray,
    candidate: np.ndarray,
    *,
    precision: str,
    regression: bool,
    what: str,
) -> Parity:
    """A :class:`Parity` record; a :class:`BundleError` when beyond the tolerance."""
    tolerance = TOLERANCES[precision]
    diff = difference(reference, candidate, regression=regression)
    parity = Parity(
        samples=int(reference.shape[0]),
        max_abs_diff=diff,
        tolerance=tolerance,
        passed=diff <= tolerance,
    )
    if not parity.passed:
        raise BundleError(
            f"parity check failed for {what}: the ONNX model and the torch pipeline differ by "
            f"{diff:.3g} (max abs, {'scaled values' if regression else 'probabilities'}) on "
            f"{parity.samples} samples; the tolerance for {precision} is {tolerance:g}",
            hint="Nothing was written. Check that the run's preprocessing.json and model belong "
            "together and are intact; pass --debug for the traceback.",
        )
    return parity
