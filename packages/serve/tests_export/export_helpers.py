"""Run folders written by hand (the layout `mlp train` writes) around real mlp_models models.

These tests run where mlp-train and mlp-data are not installed: the preprocessing JSON is
written here in mlp-data's documented format, and expected network inputs are computed by
hand from it, independently of the exporter. Imported by name (``from export_helpers import
...``); the fixtures live in conftest.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mlp_models import create_model

NUMERIC = [
    {"name": "length", "fill_value": 10.0, "offset": 12.0, "scale": 4.0},
    {"name": "mass", "fill_value": 3000.0, "offset": 3500.0, "scale": 500.0},
]
CATEGORICAL = [
    {"name": "colour", "categories": ["blue", "green", "red"], "fill_index": 0},
    {"name": "year", "categories": ["2007", "2008"], "fill_index": 2},  # most_frequent impute
]


def preprocessor(encoding: str, task: str, classes: list[str] | None) -> dict:
    categorical = [
        {
            **c,
            "missing_index": 0,
            "unknown_index": 1,
            "first_category_index": 2,
            "cardinality": 2 + len(c["categories"]),
        }
        for c in CATEGORICAL
    ]
    numeric_out = [c["name"] for c in NUMERIC]
    if encoding == "onehot":
        for c in CATEGORICAL:
            numeric_out += [f"{c['name']}=<missing>", f"{c['name']}=<unknown>"]
            numeric_out += [f"{c['name']}={v}" for v in c["categories"]]
    return {
        "format": "mlp.tabular_preprocessor",
        "version": 1,
        "options": {
            "numeric_impute": "median",
            "numeric_fill_value": 0.0,
            "scaling": "standard",
            "categorical_impute": "missing_slot",
            "categorical_fill_value": "missing",
            "encoding": encoding,
        },
        "task": task,
        "target": "kind",
        "target_classes": classes,
        "numeric": NUMERIC,
        "categorical": categorical,
        "outputs": {
            "numeric": numeric_out,
            "categorical": [c["name"] for c in CATEGORICAL] if encoding == "index" else [],
        },
    }


def write_tabular_run(
    folder: Path, *, encoding: str = "index", task: str = "binary", num_outputs: int = 1
) -> Path:
    """A run folder whose model is a freshly initialised (seeded) tabular_mlp."""
    torch.manual_seed(0)
    regression = task == "regression"
    classes = None if regression else (["no", "yes"] if task == "binary" else ["a", "b", "c"])
    width = 2 + (sum(2 + len(c["categories"]) for c in CATEGORICAL) if encoding == "onehot" else 0)
    cards = [2 + len(c["categories"]) for c in CATEGORICAL] if encoding == "index" else []
    kwargs = {"num_outputs": num_outputs} if regression else {}
    if task == "multiclass":
        kwargs["num_classes"] = 3
    model = create_model(
        "tabular_mlp",
        num_numeric=width,
        categorical_cardinalities=cards,
        task=task,
        hidden_sizes=[16],
        dropout=0.0,
        **kwargs,
    )
    model.eval()
    folder.mkdir(parents=True)
    model.save(folder / "model")
    (folder / "config.yaml").write_text(
        "data:\n  adapter: csv\n  path: no-such-data.csv\n  target: kind\n"
        "model:\n  name: tabular_mlp\ntraining:\n  experiment: tests\n"
    )
    (folder / "dataset.json").write_text(
        json.dumps(
            {"task": "regression" if regression else "classification", "class_names": classes}
        )
    )
    prep = preprocessor(encoding, "regression" if regression else "classification", classes)
    (folder / "preprocessing.json").write_text(
        json.dumps({"type": "tabular", "preprocessor": prep, "row_schema": {"type": "object"}})
    )
    (folder / "metrics.json").write_text(json.dumps({"val.loss": 0.5}))
    return folder
