import hashlib
import random
import re
from datetime import datetime, timezone

import numpy as np
import pytest

from mlp_core.files import atomic_write_bytes, atomic_write_text, atomic_writer, sha256_file
from mlp_core.runs import new_run_dir, run_name
from mlp_core.seeding import seed_everything


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "sub" / "model.bin"
    atomic_write_bytes(target, b"first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["model.bin"]  # no temp files left


def test_failed_write_keeps_previous_content(tmp_path):
    target = tmp_path / "checkpoint.pt"
    atomic_write_bytes(target, b"good")
    with pytest.raises(RuntimeError), atomic_writer(target) as handle:
        handle.write(b"half a checkp")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_atomic_writer_rejects_append_mode(tmp_path):
    with pytest.raises(ValueError, match="mode must be"), atomic_writer(tmp_path / "x", "a"):
        pass


def test_sha256_matches_hashlib_on_multi_chunk_file(tmp_path):
    data = bytes(range(256)) * 10_000  # 2.5 MB: several read chunks
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_run_names_sort_by_time_and_are_safe():
    early = run_name("my run/../x", now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    late = run_name("a", now=datetime(2026, 1, 2, 3, 4, 6, tzinfo=timezone.utc))
    assert re.fullmatch(r"20260102-030405-my-run-\.\.-x-[0-9a-f]{4}", early)
    assert "/" not in early
    assert early < late


def test_new_run_dir_never_reuses(tmp_path):
    dirs = {new_run_dir(tmp_path, "same") for _ in range(20)}
    assert len(dirs) == 20
    assert all(d.is_dir() and d.parent == tmp_path for d in dirs)


def test_seed_everything_repeats_python_and_numpy():
    seed_everything(123)
    first = (random.random(), np.random.rand(3).tolist())
    seed_everything(123)
    assert (random.random(), np.random.rand(3).tolist()) == first
    with pytest.raises(ValueError, match="seed must be"):
        seed_everything(-1)
