"""Images per second of ImageFolderAdapter's loader against torchvision's ImageFolder.

Both read the same PNGs (scikit-learn's digits, upscaled, written a few times over) with the same
transform, batch size and workers; the ratio printed is ours / torchvision's, measured
alternately in one run so that machine noise hits both alike. Not a test: run it by hand,

    .venvs/data/bin/python tools/bench/bench_images.py [--copies 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets

from mlp_data.image.adapter import ImageFolderAdapter
from mlp_data.image.transforms import AugmentConfig, ImagePreprocessor, ImageTransformConfig
from mlp_data.synthetic import write_digits_folder


def write_images(root: Path, *, copies: int, image_size: int) -> int:
    """The digits, ``copies`` times over, as one class-per-folder tree; returns the count."""
    first = write_digits_folder(root / "copy0", image_size=image_size)
    tree = root / "tree"
    for copy in range(copies):
        for image in first.rglob("*.png"):
            target = tree / image.parent.name / f"{copy}_{image.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image, target)
    shutil.rmtree(first)
    return sum(1 for _ in tree.rglob("*.png"))


def images_per_second(loader: Iterable, count_of: Callable[[object], int]) -> float:
    start = time.perf_counter()
    seen = sum(count_of(batch) for batch in loader)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=2, help="times the 1797 digits are written")
    parser.add_argument("--image-size", type=int, default=32, help="side of the written PNGs")
    parser.add_argument("--input-size", type=int, default=28, help="model input side (crop)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="timed epochs of each, alternating")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the workers do the work; keep the main process from competing

    with tempfile.TemporaryDirectory() as folder:
        count = write_images(Path(folder), copies=args.copies, image_size=args.image_size)
        root = Path(folder) / "tree"
        section = {
            "adapter": "image_folder",
            "path": str(root),
            "image_size": args.input_size,
            "resize": args.input_size + 4,
            "augment": {"enabled": False},  # the same (eval) transform on both sides
            "batch_size": args.batch_size,
            "num_workers": args.workers,
            "persistent_workers": args.workers > 0,
            "split": {"val": 0.0, "test": 0.0},  # every image in the one timed split
        }
        start = time.perf_counter()
        adapter = ImageFolderAdapter.from_config(section)
        ours = adapter.loaders(("train",))["train"]
        our_prepare = time.perf_counter() - start

        transform = ImagePreprocessor(
            ImageTransformConfig(
                image_size=args.input_size,
                resize=args.input_size + 4,
                augment=AugmentConfig(enabled=False),
            )
        ).eval_transform
        start = time.perf_counter()
        reference = datasets.ImageFolder(str(root), transform=transform)
        their_prepare = time.perf_counter() - start
        theirs = DataLoader(
            reference,
            batch_size=args.batch_size,
            shuffle=True,
            num_workers=args.workers,
            persistent_workers=args.workers > 0,
            generator=torch.Generator().manual_seed(42),
        )
        assert len(ours.dataset) == len(reference) == count

        # One untimed epoch each starts the persistent workers and warms the file cache.
        images_per_second(ours, lambda batch: len(batch["paths"]))
        images_per_second(theirs, lambda batch: len(batch[1]))
        our_rates, their_rates = [], []
        for _ in range(args.rounds):
            our_rates.append(images_per_second(ours, lambda batch: len(batch["paths"])))
            their_rates.append(images_per_second(theirs, lambda batch: len(batch[1])))

    ours_median, theirs_median = statistics.median(our_rates), statistics.median(their_rates)
    print(
        f"{count} PNGs {args.image_size}px -> {args.input_size}px RGB, batch {args.batch_size}, "
        f"{args.workers} workers, {args.rounds} timed epochs each (median)"
    )
    print(f"prepare (index + verify every image): ours {our_prepare:.2f} s, ", end="")
    print(f"torchvision ImageFolder (index only) {their_prepare:.2f} s")
    print(f"mlp_data ImageFolderAdapter : {ours_median:8.0f} images/s")
    print(f"torchvision ImageFolder     : {theirs_median:8.0f} images/s")
    print(f"ratio ours / torchvision    : {ours_median / theirs_median:.2f}")


if __name__ == "__main__":
    main()
