import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mlp_core import batch
from mlp_data.base import SplitConfig
from mlp_data.registry import create_adapter
from mlp_data.tabular.pieces import iter_batches, plan_pieces
from mlp_data.tabular.preprocessor import PreprocessingOptions, TabularPreprocessor
from mlp_data.tabular.streaming import (
    LargeScaleLoader,
    StreamingTabularDataset,
    TableStream,
    fit_streaming,
)

ROWS = 5000


def write_table(path: Path, rows: int = ROWS) -> Path:
    rng = np.random.default_rng(0)
    pd.DataFrame({
        "id": np.arange(rows),
        "x": rng.normal(size=rows).round(4),
        "c": rng.choice(["a", "b", "c"], size=rows),
        "y": rng.choice(["no", "yes"], size=rows),
    }).to_csv(path, index=False)  # fmt: skip
    return path


def stream(path: Path, chunk_bytes: int = 8192) -> TableStream:
    types = {"id": pa.float64(), "x": pa.float64(), "c": pa.string(), "y": pa.string()}
    return TableStream(path, column_types=types, chunk_bytes=chunk_bytes, block_bytes=4096)


def preprocessor() -> TabularPreprocessor:
    # Unscaled ids pass through exactly (float32 holds integers up to 2**24).
    options = PreprocessingOptions(scaling="none", encoding="index")
    return TabularPreprocessor(["id", "x"], ["c"], target="y", options=options)


def seen_ids(loader) -> list[int]:
    return [int(i) for b in loader for i in b[batch.NUMERIC][:, 0].tolist()]


def test_pieces_cover_every_row_once(tmp_path):
    path = write_table(tmp_path / "t.csv")
    for chunk in (100, 4096, 10**9):
        got = np.concatenate(
            [b.column("id").to_numpy() for b in iter_batches(path, chunk_bytes=chunk)]
        )
        assert got.tolist() == list(range(ROWS))


def test_reader_holds_one_bounded_batch_at_a_time(tmp_path):
    path = write_table(tmp_path / "t.csv", rows=200_000)
    size = path.stat().st_size
    block = 64 << 10
    peak, batches, rows = 0, 0, 0
    baseline = pa.total_allocated_bytes()
    for record_batch in iter_batches(path, block_bytes=block, chunk_bytes=size):
        peak = max(peak, pa.total_allocated_bytes() - baseline)
        batches += 1
        rows += record_batch.num_rows
        assert record_batch.nbytes < 4 * block
    assert rows == 200_000 and batches > 50
    # Arrow's pool held a few blocks (read-ahead included), never the 4 MB file.
    assert peak < 16 * block < size / 3, (peak, size)


def test_parquet_streams_by_row_group(tmp_path):
    frame = pd.read_csv(write_table(tmp_path / "t.csv"))
    path = tmp_path / "t.parquet"
    frame.to_parquet(path, row_group_size=1000)
    assert len(plan_pieces(path)) == 5
    data = StreamingTabularDataset(TableStream(path), preprocessor().fit(frame), batch_size=300)
    loader = LargeScaleLoader(data, num_workers=2)
    assert sorted(seen_ids(loader)) == list(range(ROWS))


def test_workers_see_every_row_once_and_set_epoch_reshuffles(tmp_path):
    path = write_table(tmp_path / "t.csv")
    prep = preprocessor().fit(pd.read_csv(path))
    data = StreamingTabularDataset(stream(path), prep, batch_size=64, shuffle=True, seed=5)
    loader = LargeScaleLoader(data, num_workers=2, persistent_workers=True)
    assert loader.persistent_workers
    first, again = seen_ids(loader), seen_ids(loader)
    loader.set_epoch(1)
    later = seen_ids(loader)
    assert sorted(first) == sorted(later) == list(range(ROWS))
    assert first == again != later
    sizes = [len(b[batch.TARGET]) for b in loader]
    assert max(sizes) == 64 and all(s > 0 for s in sizes)


def test_streaming_fit_and_hash_splits_partition_the_file(tmp_path):
    path = write_table(tmp_path / "t.csv")
    config = SplitConfig(val=0.2, test=0.1, seed=3)
    prep = preprocessor()
    sizes = fit_streaming(stream(path), prep, sample_rows=500, split_config=config)
    assert sum(sizes.values()) == ROWS and abs(sizes["val"] / ROWS - 0.2) < 0.03
    assert prep.target_classes == ["no", "yes"]
    by_split = {}
    for split in ("train", "val", "test"):
        data = StreamingTabularDataset(stream(path), prep, split=split, split_config=config)
        by_split[split] = seen_ids(LargeScaleLoader(data))
        assert len(by_split[split]) == sizes[split]
    assert sorted(i for ids in by_split.values() for i in ids) == list(range(ROWS))


def test_adapter_streaming_mode_matches_its_info(tmp_path):
    path = write_table(tmp_path / "t.csv")
    data = create_adapter({
        "adapter": "csv", "path": str(path), "target": "y", "batch_size": 128, "num_workers": 2,
        "streaming": {"enabled": True, "chunk_bytes": 16384, "fit_rows": 1000},
    })  # fmt: skip
    info = data.info()
    assert info.task == "classification" and info.class_names == ["no", "yes"]
    assert info.model_inputs == {"num_numeric": 2 + 5, "categorical_cardinalities": []}
    loaders = data.loaders()
    counts = {s: sum(len(b[batch.TARGET]) for b in loader) for s, loader in loaders.items()}
    assert counts == info.sizes and sum(counts.values()) == ROWS


# -- two ranks x two workers over gloo ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, path: str, prep_json: str, out: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        prep = TabularPreprocessor.from_json(prep_json)
        # No rank or world size given: the dataset reads them from torch.distributed.
        data = StreamingTabularDataset(stream(Path(path), chunk_bytes=2048), prep, batch_size=50)
        assert (data.rank, data.world_size) == (rank, world)
        # This process was spawned, so its workers would be spawned too (re-importing torch in
        # each); forking them is what a torchrun-started rank does anyway.
        mine = seen_ids(LargeScaleLoader(data, num_workers=2, multiprocessing_context="fork"))
        gathered: list = [None] * world
        dist.all_gather_object(gathered, mine)
        if rank == 0:
            torch.save(gathered, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_two_workers_see_every_sample_exactly_once(tmp_path):
    path = write_table(tmp_path / "t.csv")
    prep = preprocessor().fit(pd.read_csv(path))
    out = tmp_path / "ids.pt"
    mp.spawn(
        _rank_main,
        args=(2, _free_port(), str(path), prep.to_json(), str(out)),
        nprocs=2,
        join=True,
    )
    per_rank = torch.load(out)
    assert all(len(ids) > ROWS // 4 for ids in per_rank)  # both ranks did real work
    everything = per_rank[0] + per_rank[1]
    assert sorted(everything) == list(range(ROWS))  # exactly once: no loss, no duplicate
