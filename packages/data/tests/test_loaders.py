import torch
from torch.utils.data import TensorDataset

from mlp_data.loaders import UnifiedLoader


def ids(loader) -> list[int]:
    return [int(i) for (batch,) in loader for i in batch]


def dataset(n: int = 100) -> TensorDataset:
    return TensorDataset(torch.arange(n))


def test_batch_sizes_and_drop_last_only_in_training():
    factory = UnifiedLoader(batch_size=32, drop_last=True)
    assert [len(b[0]) for b in factory.loader(dataset(), "train")] == [32, 32, 32]
    assert [len(b[0]) for b in factory.loader(dataset(), "val")] == [32, 32, 32, 4]


def test_seeded_shuffle_repeats_and_seed_matters():
    first = ids(UnifiedLoader(batch_size=10, seed=1).loader(dataset(), "train"))
    again = ids(UnifiedLoader(batch_size=10, seed=1).loader(dataset(), "train"))
    other = ids(UnifiedLoader(batch_size=10, seed=2).loader(dataset(), "train"))
    assert first == again != other
    assert sorted(first) == list(range(100)) and first != list(range(100))


def test_val_and_test_are_never_shuffled():
    factory = UnifiedLoader(batch_size=7, seed=1)
    for split in ("val", "test"):
        assert ids(factory.loader(dataset(), split)) == list(range(100))


def test_workers_deliver_every_sample():
    loader = UnifiedLoader(batch_size=8, num_workers=2, persistent_workers=True).loader(
        dataset(), "train"
    )
    assert loader.persistent_workers
    assert sorted(ids(loader)) == list(range(100))


def test_distributed_shards_are_disjoint_and_set_epoch_reshuffles():
    shards = []
    for rank in range(2):
        factory = UnifiedLoader(batch_size=5, distributed=True, rank=rank, world_size=2)
        loader = factory.loader(dataset(), "train")
        epoch0 = ids(loader)
        factory.set_epoch(1)
        assert ids(loader) != epoch0
        shards.append(epoch0)
    assert sorted(shards[0] + shards[1]) == list(range(100))
