"""`mlp predict MODEL --local BUNDLE --input F --output F`: a file bigger than a chunk, streamed
through the in-process Predictor, equals the Predictor's answer for all its rows at once."""

from __future__ import annotations

import argparse
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from serve_helpers import PENGUIN_LABELS, cpu_config, write_convenience_repo

from mlp_core.errors import ServingError
from mlp_serve import Predictor
from mlp_serve.batch_predict import Progress, predict_file
from mlp_serve.cli import predict
from mlp_serve.errors import InvalidInput

ROWS = 2_500  # the file
CHUNK = 256  # rows per chunk: the file is ten chunks and a bit
MLP = Path(sys.executable).with_name("mlp")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return write_convenience_repo(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def penguins(repo):
    config = cpu_config(batching={"enabled": False, "max_batch_size": CHUNK})
    with Predictor.load(repo / "penguins" / "1", config=config) as predictor:
        yield predictor


def feature_table(rows: int = ROWS, seed: int = 0) -> pa.Table:
    """Raw features with what real files hold: nulls, NaN, unseen categories, and columns the
    model does not take (an id and the target)."""
    rng = np.random.default_rng(seed)
    bill = rng.normal(size=rows) * 3
    bill[rng.random(rows) < 0.1] = np.nan
    flipper = rng.integers(-5, 5, size=rows).astype(float)
    island = rng.choice(np.array(["a", "b", "never-seen", ""], dtype=object), size=rows)
    return pa.table(
        {
            "id": np.arange(rows),
            "bill": pa.array(bill, mask=rng.random(rows) < 0.05),  # nulls beside the NaN
            "flipper": pa.array(flipper, mask=rng.random(rows) < 0.05),
            "island": pa.array(list(island), mask=rng.random(rows) < 0.05),
            "target": rng.choice(PENGUIN_LABELS, size=rows),
        }
    )


def records(table: pa.Table) -> list[dict]:
    """The table as rows for Predictor.predict: what a user with a small file would pass."""
    return [
        {k: v for k, v in row.items() if k in ("bill", "flipper", "island")}
        for row in table.to_pylist()
    ]


def whole(predictor: Predictor, rows: list[dict]) -> list[dict]:
    """Predictor.predict over every row: in runs of the model's max_batch_size, its limit."""
    return [
        p
        for start in range(0, len(rows), CHUNK)
        for p in predictor.predict(rows[start : start + CHUNK])
    ]


def assert_equal_predictions(output: pa.Table, expected: list[dict]) -> None:
    assert output.num_rows == len(expected)
    assert output.column("label").to_pylist() == [p["label"] for p in expected]
    for name in PENGUIN_LABELS:
        got = output.column(f"probability_{name}").to_numpy()
        want = np.array([p["probabilities"][name] for p in expected])
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    predict.configure(parser)
    return parser.parse_args(list(argv))


def test_a_parquet_file_bigger_than_a_chunk_equals_the_whole_prediction(penguins, tmp_path):
    table = feature_table()
    source, destination = tmp_path / "rows.parquet", tmp_path / "preds.parquet"
    pq.write_table(table, source, row_group_size=700)  # row groups that are not chunks
    chunks: list[int] = []
    summary = predict_file(penguins, source, destination, batch_rows=CHUNK, on_chunk=chunks.append)

    assert summary.rows == ROWS and summary.output == destination
    assert max(chunks) <= CHUNK and sum(chunks) == ROWS
    assert len(chunks) >= math.ceil(ROWS / CHUNK)
    output = pq.read_table(destination)
    assert output.column_names == ["label", *(f"probability_{n}" for n in PENGUIN_LABELS)]
    assert_equal_predictions(output, whole(penguins, records(table)))
    assert not list(tmp_path.glob(".*partial"))


def test_memory_stays_at_a_chunk_however_long_the_file(penguins, tmp_path):
    # What Arrow holds while streaming, over what it held before: flat from the first chunks to
    # the last, and a small part of what the whole file takes once read.
    chunks = 200
    source = tmp_path / "long.parquet"
    pq.write_table(feature_table(rows=chunks * CHUNK, seed=1), source, row_group_size=CHUNK)
    before = pa.total_allocated_bytes()
    held: list[int] = []
    predict_file(
        penguins,
        source,
        tmp_path / "preds.parquet",
        batch_rows=CHUNK,
        on_chunk=lambda rows: held.append(pa.total_allocated_bytes() - before),
    )
    everything = pq.read_table(source).nbytes
    assert len(held) == chunks
    assert max(held[-20:]) <= 2 * max(held[:10]) + (64 << 10), held
    assert max(held) < everything / 10, (max(held), everything)


def test_csv_in_and_out_through_the_mlp_command(repo, penguins, tmp_path):
    table = feature_table(rows=900, seed=2)
    source, destination = tmp_path / "rows.csv", tmp_path / "preds.csv"
    pa_csv.write_csv(table, source)
    text = source.read_text().replace('""', "NA", 50)  # "NA" is missing too, as in --csv
    source.write_text(text)
    proc = subprocess.run(
        [
            str(MLP),
            "predict",
            "penguins",
            "--local",
            str(repo),
            "--input",
            str(source),
            "--output",
            str(destination),
            "--batch-size",
            "128",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"rows": 900, "output": str(destination)}
    assert "900 rows in" in proc.stderr and "rows/s" in proc.stderr
    assert "\r" not in proc.stderr  # no progress line when stderr is not a terminal
    expected_rows = records(pa_csv.read_csv(source, convert_options=CSV_AS_TEXT_OPTIONS()))
    output = pa_csv.read_csv(destination)
    assert_equal_predictions(output, whole(penguins, expected_rows))


def CSV_AS_TEXT_OPTIONS() -> pa_csv.ConvertOptions:
    """How `mlp predict --csv` reads a CSV: island as text, NA and empty cells missing."""
    return pa_csv.ConvertOptions(
        column_types={"island": pa.string(), "bill": pa.float64(), "flipper": pa.float64()},
        null_values=["", "NA", "NaN"],
        strings_can_be_null=True,
    )


def test_local_rows_without_a_file_answer_what_predict_answers(repo, penguins, capsys):
    rows = [{"bill": 1.5, "flipper": 2, "island": "b"}, {"island": "never-seen"}]
    for where in (repo, repo / "penguins" / "1"):  # a repository, or a bundle folder
        assert predict.run(args("penguins", "--json", json.dumps(rows), "--local", str(where))) == 0
        assert json.loads(capsys.readouterr().out)["predictions"] == penguins.predict(rows)


def test_predict_table_takes_integer_bool_and_dictionary_categories(penguins):
    # The rows conversion's rules by column: integers and booleans are their text.
    table = pa.table(
        {
            "bill": pa.array([1, None, 3], pa.int32()),
            "island": pa.array(["a", None, "b"]).dictionary_encode(),
            "flipper": pa.array([0.5, 1.0, None], pa.float32()),
        }
    )
    rows = [
        {"bill": 1, "island": "a", "flipper": 0.5},
        {"flipper": 1.0},
        {"bill": 3, "island": "b"},
    ]
    assert_equal_predictions(penguins.predict_table(table), penguins.predict(rows))
    numbers = pa.table({"island": pa.array([7, None]), "other": [True, False]})
    assert_equal_predictions(penguins.predict_table(numbers), penguins.predict([{"island": 7}, {}]))
    flags = pa.table({"island": pa.array([True, None])})
    assert_equal_predictions(
        penguins.predict_table(flags), penguins.predict([{"island": "True"}, {}])
    )


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"bill": pa.array(["long"])}, "column 'bill': expected numbers, got string"),
        ({"bill": pa.array([True])}, "column 'bill': expected numbers, got bool"),
        ({"island": pa.array([1.5])}, "column 'island': expected text or integers, got double"),
    ],
)
def test_wrong_column_types_are_named(penguins, tmp_path, columns, message):
    with pytest.raises(InvalidInput, match=message):
        penguins.predict_table(pa.table(columns))
    source = tmp_path / "bad.parquet"
    pq.write_table(pa.table(columns), source)
    with pytest.raises(InvalidInput, match=message):
        predict_file(penguins, source, tmp_path / "out.parquet")
    assert list(tmp_path.iterdir()) == [source]  # no output, no partial file left


def test_file_mistakes_are_typed_errors(repo, penguins, tmp_path):
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1.0]}), other)
    with pytest.raises(InvalidInput, match="none of the model's columns"):
        predict_file(penguins, other, tmp_path / "out.parquet")
    with pytest.raises(InvalidInput, match=r"expected a \.parquet .* or \.csv file name"):
        predict_file(penguins, other, tmp_path / "out.json")
    text = tmp_path / "rows.csv"
    text.write_text("bill,island\n1.0,a\nlong,b\n")
    with pytest.raises(InvalidInput, match="rows.csv: .*long"):
        predict_file(penguins, text, tmp_path / "out.parquet")
    with pytest.raises(ServingError, match="--input .*: no such file"):
        predict.run(args("penguins", "--input", str(tmp_path / "nope.parquet"), "--local", "x"))
    with pytest.raises(ServingError, match="give --local BUNDLE and --output FILE"):
        predict.run(args("penguins", "--input", str(other), "--url", "http://127.0.0.1:1"))
    with pytest.raises(ServingError, match="--output goes with --input"):
        predict.run(args("penguins", "--json", "[]", "--output", "x.parquet", "--local", "x"))
    with pytest.raises(ServingError, match="--local .*nowhere: no such bundle"):
        predict.run(args("penguins", "--json", "[]", "--local", str(tmp_path / "nowhere")))


def test_progress_is_one_line_redrawn_on_a_terminal(penguins, tmp_path):
    source = tmp_path / "rows.parquet"
    pq.write_table(feature_table(rows=600), source)
    screen = io.StringIO()
    predict_file(
        penguins,
        source,
        tmp_path / "p.parquet",
        batch_rows=CHUNK,
        progress=Progress(screen, enabled=True),
    )
    text = screen.getvalue()
    assert text.startswith("\rmlp predict: ") and text.endswith("\n")
    assert "600/600 rows (100%)" in text and "rows/s" in text and text.count("\n") == 1


def test_without_pyarrow_the_error_names_the_extra(repo, tmp_path):
    # pyarrow made unimportable in a fresh interpreter, as in an install without the extra.
    code = (
        "import sys; sys.modules['pyarrow'] = None\n"
        "from mlp_core.cli import main\n"
        f"sys.exit(main(['predict', 'penguins', '--local', {str(repo)!r}, '--input', "
        f"{str(repo / 'penguins' / '1' / 'manifest.json')!r}, '--output', 'x.parquet']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "pyarrow" in proc.stderr and "pip install 'mlp-serve[parquet]'" in proc.stderr
