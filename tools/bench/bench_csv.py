"""CSV to training tensors: CSVAdapter + loader against plain pandas + torch, and the memory of
the streaming path on a file bigger than the memory it is allowed.

Not a test: it prints numbers measured side by side in one run.

    .venvs/data/bin/python tools/bench/bench_csv.py [--rows 1000000] [--copies 5] [--cap-mib 256]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

NUMERIC = [f"x{i}" for i in range(6)]
CATEGORICAL = ["colour", "size"]
TARGET = "label"


def generate(path: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    columns = {name: rng.normal(size=rows).round(5) for name in NUMERIC}
    columns["colour"] = rng.choice(["red", "green", "blue", "cyan", "black"], size=rows)
    columns["size"] = rng.choice(["S", "M", "L"], size=rows)
    columns[TARGET] = rng.choice(["a", "b", "c"], size=rows)
    pacsv.write_csv(pa.table(columns), path)


def plain_pandas(path: Path) -> float:
    import pandas as pd
    import torch

    start = time.perf_counter()
    frame = pd.read_csv(path)
    features = torch.tensor(frame[NUMERIC].to_numpy(dtype=np.float32))
    target = torch.tensor(pd.factorize(frame[TARGET], sort=True)[0])
    assert len(features) == len(target)
    return time.perf_counter() - start


def adapter_path(path: Path, batch_size: int) -> tuple[float, int]:
    from mlp_data.registry import create_adapter

    start = time.perf_counter()
    data = create_adapter(
        {"adapter": "csv", "path": str(path), "target": TARGET, "batch_size": batch_size}
    )
    rows = 0
    for loader in data.loaders().values():
        for batch in loader:
            rows += len(batch["target"])
    return time.perf_counter() - start, rows


# The streaming pass runs in a child process so that its peak RSS and its address-space cap are
# its own. The cap is set after the imports (torch alone maps gigabytes of address space), so it
# bounds exactly what reading, preprocessing and batching the file may add.
CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from mlp_data.base import SplitConfig
from mlp_data.tabular.streaming import LargeScaleLoader, StreamingTabularDataset, TableStream, fit_streaming
from mlp_data.tabular.preprocessor import TabularPreprocessor
import pyarrow as pa

path, warm, cap = sys.argv[1], sys.argv[2], int(sys.argv[3])
numeric, categorical, target = json.loads(sys.argv[4])
def vm_bytes():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
def status_bytes(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
types = {n: pa.float64() for n in numeric} | {n: pa.string() for n in [*categorical, target]}
def run(path):
    stream = TableStream(path, column_types=types, chunk_bytes=32 << 20, block_bytes=4 << 20)
    prep = TabularPreprocessor(numeric, categorical, target=target)
    start = time.perf_counter()
    fit_streaming(stream, prep, sample_rows=50_000, split_config=None)
    fitted = time.perf_counter()
    rows = 0
    for batch in LargeScaleLoader(StreamingTabularDataset(stream, prep, batch_size=4096)):
        rows += len(batch["target"])
    return rows, start, fitted, time.perf_counter()
run(warm)  # first use imports parts of pandas and pyarrow lazily: not the stream's memory
before = status_bytes("VmRSS")
resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + cap, resource.RLIM_INFINITY))
rows, start, fitted, done = run(path)
# VmHWM, not ru_maxrss: after fork+exec ru_maxrss can still hold the parent's peak.
peak = status_bytes("VmHWM")
print(json.dumps({"rows": rows, "fit_s": fitted - start, "stream_s": done - fitted,
                  "rss_before": before, "peak_rss": peak}))
"""


def streaming_memory(path: Path, warm: Path, cap: int) -> dict:
    spec = json.dumps([NUMERIC, CATEGORICAL, TARGET])
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(warm), str(cap), spec],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"streaming child failed under the cap:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--copies", type=int, default=5, help="big file = this many copies")
    parser.add_argument("--cap-mib", type=int, default=256, help="address space the stream may add")
    parser.add_argument("--batch-size", type=int, default=1024)
    args = parser.parse_args()
    mib = 1 << 20

    with tempfile.TemporaryDirectory() as tmp:
        small = Path(tmp) / "rows.csv"
        generate(small, args.rows)
        print(f"file: {args.rows:,} rows, {small.stat().st_size / mib:.1f} MiB, 2 cores here")

        # Each side once to warm imports and the page cache, then the measured run.
        plain_pandas(small)
        adapter_path(small, args.batch_size)
        plain = plain_pandas(small)
        ours, rows = adapter_path(small, args.batch_size)
        assert rows == args.rows
        print(f"pandas.read_csv + torch.tensor : {args.rows / plain:12,.0f} rows/s ({plain:.2f} s)")
        print(
            f"CSVAdapter (validate, split, preprocess) + loaders, batch {args.batch_size}: "
            f"{rows / ours:,.0f} rows/s ({ours:.2f} s)"
        )
        print(f"ratio adapter / plain           : {plain / ours:.2f}x the plain rows/s")

        big = Path(tmp) / "big.csv"
        data = small.read_bytes()
        body = data[data.index(b"\n") + 1 :]
        with big.open("wb") as handle:
            handle.write(data)
            for _ in range(args.copies - 1):
                handle.write(body)
        del data, body
        size = big.stat().st_size
        cap = args.cap_mib * mib
        result = streaming_memory(big, small, cap)
        added = result["peak_rss"] - result["rss_before"]
        print(
            f"streaming: {result['rows']:,} rows, file {size / mib:.0f} MiB, address-space cap "
            f"{args.cap_mib} MiB above the imports (file/cap = {size / cap:.1f})"
        )
        print(
            f"  fit pass {result['fit_s']:.1f} s, stream pass {result['stream_s']:.1f} s "
            f"({result['rows'] / result['stream_s']:,.0f} rows/s)"
        )
        print(
            f"  RSS before {result['rss_before'] / mib:.0f} MiB, peak {result['peak_rss'] / mib:.0f}"
            f" MiB: the stream added {added / mib:.0f} MiB = {added / size:.1%} of the file"
        )
    print(
        f"bench peak RSS (parent): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )


if __name__ == "__main__":
    main()
