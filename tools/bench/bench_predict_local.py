"""Batch prediction over a Parquet file: `mlp predict --local` streaming against the pandas +
onnxruntime loop a user would write by hand, same file, same model, one run.

Not a test: it prints numbers measured side by side. Each contender is a fresh process timed from
start to exit (imports, model load, reading, predicting, writing the predictions as Parquet), so
rows/s are what a user waits for; its peak RSS comes from the kernel (``wait4``). The two outputs
are checked equal before anything is printed. Rounds alternate the order; medians are printed.

    .venv/bin/python tools/bench/bench_predict_local.py [--rows 1000000] [--rounds 3]

The workspace environment: pandas is no dependency of mlp-serve, and the hand-written loop needs
it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
from onnx import TensorProto, helper, numpy_helper

NUMERIC = [f"x{i}" for i in range(8)]
CATEGORICAL = ["colour", "size"]
CATEGORIES = {"colour": ["red", "green", "blue", "cyan", "black"], "size": ["S", "M", "L"]}
LABELS = ["a", "b", "c"]
HIDDEN = 64

# The loop a competent user writes without mlp-serve: pandas reads the file, onnxruntime runs
# chunks of it, pandas writes the predictions. Missing numbers stay NaN (the graph imputes them),
# missing categories become "" as the bundle expects.
HAND_WRITTEN = """
import sys
import numpy as np
import onnxruntime as ort
import pandas as pd

source, model, output, chunk = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
numeric, categorical, labels = {numeric}, {categorical}, {labels}
frame = pd.read_parquet(source, columns=numeric + categorical)
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
parts = []
for start in range(0, len(frame), chunk):
    rows = frame.iloc[start : start + chunk]
    feeds = {{
        "numeric": rows[numeric].to_numpy(np.float32),
        "categorical": rows[categorical].fillna("").astype(str).to_numpy(object),
    }}
    (probabilities,) = session.run(["probabilities"], feeds)
    part = pd.DataFrame(probabilities, columns=[f"probability_{{c}}" for c in labels])
    part.insert(0, "label", np.asarray(labels, dtype=object)[probabilities.argmax(axis=1)])
    parts.append(part)
pd.concat(parts, ignore_index=True).to_parquet(output, index=False)
"""


def model() -> onnx.ModelProto:
    """numeric FP32 [-1, 8] + categorical BYTES [-1, 2] -> probabilities [-1, 3]: NaN imputed
    as 0, categories as codes, then an MLP 10-64-3 with a softmax."""
    rng = np.random.default_rng(0)
    keys = sorted({v for values in CATEGORIES.values() for v in values})
    width = len(NUMERIC) + len(CATEGORICAL)
    initializers = [
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(rng.normal(size=(width, HIDDEN)).astype(np.float32) / 3, "w1"),
        numpy_helper.from_array(rng.normal(size=(HIDDEN,)).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(size=(HIDDEN, 3)).astype(np.float32) / 8, "w2"),
    ]
    nodes = [
        helper.make_node("IsNaN", ["numeric"], ["missing"]),
        helper.make_node("Where", ["missing", "zero", "numeric"], ["filled"]),
        helper.make_node(
            "LabelEncoder",
            ["categorical"],
            ["codes"],
            domain="ai.onnx.ml",
            keys_strings=keys,
            values_floats=[float(i + 1) for i in range(len(keys))],
            default_float=0.0,
        ),
        helper.make_node("Concat", ["filled", "codes"], ["features"], axis=1),
        helper.make_node("MatMul", ["features", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["a"]),
        helper.make_node("MatMul", ["a", "w2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tabular",
        [
            helper.make_tensor_value_info("numeric", TensorProto.FLOAT, [None, len(NUMERIC)]),
            helper.make_tensor_value_info(
                "categorical", TensorProto.STRING, [None, len(CATEGORICAL)]
            ),
        ],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3])],
        initializer=initializers,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    built = helper.make_model(graph, opset_imports=opsets)
    built.ir_version = 8
    onnx.checker.check_model(built)
    return built


def write_bundle(repo: Path) -> Path:
    from mlp_core.files import sha256_file
    from mlp_core.tensors import TensorSpec
    from mlp_serve.bundle import FeatureSchema, Manifest, write_manifest

    folder = repo / "tabular" / "1"
    folder.mkdir(parents=True)
    onnx.save(model(), folder / "model.onnx")
    manifest = Manifest(
        name="tabular",
        version=1,
        task="multiclass",
        kind="tabular",
        inputs=[
            TensorSpec(name="numeric", datatype="FP32", shape=[-1, len(NUMERIC)]),
            TensorSpec(name="categorical", datatype="BYTES", shape=[-1, len(CATEGORICAL)]),
        ],
        outputs=[TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 3])],
        feature_schema=FeatureSchema(numeric=NUMERIC, categorical=CATEGORICAL),
        class_labels=LABELS,
        sha256=sha256_file(folder / "model.onnx"),
        opset=17,
    )
    write_manifest(folder, manifest)
    return folder / "model.onnx"


def write_rows(path: Path, rows: int) -> None:
    """Raw features with 2% missing values, an id and a target the model does not take, in row
    groups of 128k rows (pandas' and pyarrow's writers make 1M-row groups by default)."""
    rng = np.random.default_rng(1)
    columns: dict[str, pa.Array] = {"id": pa.array(np.arange(rows))}
    for name in NUMERIC:
        columns[name] = pa.array(rng.normal(size=rows), mask=rng.random(rows) < 0.02)
    for name in CATEGORICAL:
        values = rng.choice(np.array(CATEGORIES[name], dtype=object), size=rows)
        columns[name] = pa.array(list(values), mask=rng.random(rows) < 0.02)
    columns["target"] = pa.array(list(rng.choice(np.array(LABELS, dtype=object), size=rows)))
    pq.write_table(pa.table(columns), path, row_group_size=128 * 1024)


def timed(command: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of a child process run to its exit."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        assert child.stderr is not None
        raise SystemExit(f"{command[:3]} failed:\n{child.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4096, help="rows per chunk, both sides")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    repo = folder / "repo"
    model_path = write_bundle(repo)
    source = folder / "rows.parquet"
    write_rows(source, args.rows)
    mlp = str(Path(sys.executable).with_name("mlp"))
    script = HAND_WRITTEN.format(numeric=NUMERIC, categorical=CATEGORICAL, labels=LABELS)
    commands = {
        "mlp predict --local": [
            mlp, "predict", "tabular", "--local", str(repo), "--input", str(source),
            "--output", str(folder / "mlp.parquet"), "--batch-size", str(args.batch_size),
        ],
        "pandas + onnxruntime": [
            sys.executable, "-c", script, str(source), str(model_path),
            str(folder / "pandas.parquet"), str(args.batch_size),
        ],
    }  # fmt: skip
    results: dict[str, dict[str, list[float]]] = {k: {"s": [], "rss": []} for k in commands}
    order = list(commands)
    for round_ in range(args.rounds):
        for name in order if round_ % 2 == 0 else order[::-1]:
            seconds, rss = timed(commands[name])
            results[name]["s"].append(seconds)
            results[name]["rss"].append(rss)

    ours, theirs = pq.read_table(folder / "mlp.parquet"), pq.read_table(folder / "pandas.parquet")
    assert ours.num_rows == theirs.num_rows == args.rows
    assert ours.column("label").to_pylist() == theirs.column("label").to_pylist()
    for label in LABELS:
        np.testing.assert_allclose(
            ours.column(f"probability_{label}").to_numpy(),
            theirs.column(f"probability_{label}").to_numpy(),
            rtol=1e-5,
            atol=1e-6,
        )

    table = {}
    print(f"{args.rows:,} rows, chunks of {args.batch_size}, {args.rounds} rounds (medians)")
    print(f"{'':24} {'seconds':>8} {'rows/s':>11} {'peak RSS MiB':>13}")
    for name, measured in results.items():
        seconds = statistics.median(measured["s"])
        rss = statistics.median(measured["rss"])
        table[name] = {"seconds": seconds, "rows_per_s": args.rows / seconds, "peak_rss_mib": rss}
        print(f"{name:24} {seconds:8.2f} {args.rows / seconds:11,.0f} {rss:13.0f}")
    ratio = table["mlp predict --local"]["rows_per_s"] / table["pandas + onnxruntime"]["rows_per_s"]
    print(f"mlp predict --local / pandas + onnxruntime rows/s: {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"rows": args.rows, "results": table, "ratio": ratio}))


if __name__ == "__main__":
    main()
