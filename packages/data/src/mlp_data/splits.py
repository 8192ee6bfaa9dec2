"""Seeded train/val/test splits: every row in exactly one split, the same rows for the same seed.

Classification splits are stratified (scikit-learn), so each split keeps the class proportions
of the whole table; a class too small to appear in every split is an error that says so.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from mlp_core.errors import DataError
from mlp_data.base import SplitConfig


def split_indices(
    num_rows: int,
    config: SplitConfig,
    *,
    labels: Sequence[object] | np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Row positions of ``train``, ``val`` and ``test``, each sorted ascending.

    ``labels`` (one per row) turn on stratification when ``config.stratify`` is set.
    """
    if num_rows <= 0:
        raise DataError("cannot split an empty table")
    if labels is not None and len(labels) != num_rows:
        raise ValueError(f"{len(labels)} labels for {num_rows} rows")
    positions = np.arange(num_rows)
    strata: np.ndarray | None = None
    classes: list[object] = []
    if labels is not None and config.stratify:
        # Integer codes: scikit-learn sorts the strata, and sorting Python objects is slow.
        values = labels if isinstance(labels, np.ndarray) else np.asarray(labels, dtype=object)
        strata, uniques = pd.factorize(values, sort=True)
        classes = uniques.tolist()
    # Two seeded cuts: test off the whole table, then val off the rest, sized so that val is
    # config.val of the whole table, not of the remainder.
    rest, test = _cut(positions, strata, classes, config.test, config.seed, "test")
    rest_strata = strata[rest] if strata is not None else None
    val_share = config.val / (1.0 - config.test) if config.test < 1 else 0.0
    train, val = _cut(rest, rest_strata, classes, val_share, config.seed + 1, "val")
    if train.size == 0:
        raise DataError(
            f"{num_rows} rows leave no training rows with val={config.val}, test={config.test}"
        )
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def _cut(
    positions: np.ndarray,
    strata: np.ndarray | None,
    names: Sequence[object],
    share: float,
    seed: int,
    name: str,
) -> tuple[np.ndarray, np.ndarray]:
    if share <= 0 or positions.size == 0:
        return positions, positions[:0]
    try:
        kept, cut = train_test_split(
            positions, test_size=share, random_state=seed, shuffle=True, stratify=strata
        )
    except ValueError as exc:
        if strata is None:
            raise DataError(f"cannot cut a {name} split of {share:.3g}: {exc}") from None
        counts = np.bincount(strata)
        rare = ", ".join(f"{str(names[c])!r} ({n})" for c, n in enumerate(counts) if 0 < n < 2)
        raise DataError(
            f"cannot stratify the {name} split: {exc}"
            + (f"; classes with too few rows: {rare}" if rare else ""),
            hint="Add rows of the rare classes, lower split.val/split.test, "
            "or set split.stratify: false.",
        ) from None
    return np.asarray(kept), np.asarray(cut)
