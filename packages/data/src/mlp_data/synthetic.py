"""Real image datasets written to disk for tests and demos, with nothing downloaded.

- :func:`write_digits_folder`: scikit-learn's bundled 8x8 handwritten digits as PNGs in a
  class-per-folder tree (for :class:`~mlp_data.image.adapter.ImageFolderAdapter`);
- :func:`write_shapes_dataset`: rectangles, circles and triangles drawn with Pillow on noisy
  backgrounds, with exact YOLO labels and a ``data.yaml``
  (for :class:`~mlp_data.detection.adapter.YOLOAdapter`).

Both are deterministic: the same arguments write the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw
from sklearn.datasets import load_digits

SHAPE_NAMES = ("rectangle", "circle", "triangle")
# Backgrounds stay at or below this grey level and shapes at or above SHAPE_MIN in every
# channel, so a shape is always visible and a test can tell shape pixels from background.
BACKGROUND_MAX = 120
SHAPE_MIN = 150
MAX_OBJECTS = 3
PLACEMENT_TRIES = 20
# Every EMPTY_EVERY-th image holds no object; half of those get an empty label file, half none,
# because YOLO allows both.
EMPTY_EVERY = 4
DIGIT_LEVELS = 16  # load_digits pixels run from 0 to 16
DIGIT_SIDE = 8  # load_digits images are 8x8, flattened to 64 values a row


def write_digits_folder(
    root: str | Path, *, image_size: int = 32, limit: int | None = None
) -> Path:
    """Write the digits as ``root/<digit>/<index>.png`` (greyscale, ``image_size`` square).

    ``limit`` keeps the first ``limit`` images; the dataset cycles through the digits, so any
    limit of a few dozen or more still holds every class.
    """
    root = Path(root)
    flat, labels = load_digits(return_X_y=True)
    images = np.asarray(flat, dtype=np.float64).reshape(-1, DIGIT_SIDE, DIGIT_SIDE)
    targets = np.asarray(labels)
    count = len(images) if limit is None else min(limit, len(images))
    for index in range(count):
        pixels = np.rint(images[index] * (255 / DIGIT_LEVELS)).astype(np.uint8)
        image = Image.fromarray(pixels, mode="L").resize(
            (image_size, image_size), Image.Resampling.BILINEAR
        )
        folder = root / str(int(targets[index]))
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index:04d}.png")
    return root


def write_shapes_dataset(
    root: str | Path,
    *,
    n_train: int,
    n_val: int,
    n_test: int = 0,
    image_size: int = 64,
    seed: int = 0,
) -> Path:
    """Write a YOLO detection dataset under ``root`` and return its ``data.yaml``.

    Layout: ``images/{train,val,test}/*.png`` with labels in ``labels/{train,val,test}/*.txt``,
    one ``class cx cy w h`` line per object, normalised to the image size; classes are
    ``SHAPE_NAMES``; the test split only when ``n_test`` > 0. Each split draws from its own
    seeded generator, so ``n_val`` and ``n_test`` do not change the training images.
    """
    root = Path(root)
    counts = (("train", n_train), ("val", n_val), ("test", n_test))
    for split_number, (split, count) in enumerate(counts):
        if split == "test" and count == 0:
            continue
        rng = np.random.default_rng([seed, split_number])
        images, labels = root / "images" / split, root / "labels" / split
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            stem = f"{split}_{index:05d}"
            empty = index % EMPTY_EVERY == EMPTY_EVERY - 1
            image, lines = _draw_scene(rng, image_size, 0 if empty else None)
            image.save(images / f"{stem}.png")
            if lines or (index // EMPTY_EVERY) % 2 == 0:
                (labels / f"{stem}.txt").write_text("".join(f"{line}\n" for line in lines))
    data_yaml = root / "data.yaml"
    document = {
        "path": ".",
        "train": "images/train",
        "val": "images/val",
        **({"test": "images/test"} if n_test else {}),
        "names": dict(enumerate(SHAPE_NAMES)),
    }
    data_yaml.write_text(yaml.safe_dump(document, sort_keys=False))
    return data_yaml


def _place(
    rng: np.random.Generator, size: int, square: bool, taken: list[tuple[int, int, int, int]]
) -> tuple[int, int, int, int] | None:
    """``(left, top, width, height)`` of a shape that overlaps no shape already drawn (so every
    label is fully visible), or None after PLACEMENT_TRIES tries."""
    for _ in range(PLACEMENT_TRIES):
        width, height = (int(v) for v in rng.integers(size // 6, size // 2 + 1, size=2))
        if square:
            height = width
        left = int(rng.integers(0, size - width + 1))
        top = int(rng.integers(0, size - height + 1))
        if all(
            left + width <= x or x + w <= left or top + height <= y or y + h <= top
            for x, y, w, h in taken
        ):
            return left, top, width, height
    return None


def _draw_scene(
    rng: np.random.Generator, size: int, objects: int | None
) -> tuple[Image.Image, list[str]]:
    """One noisy background with ``objects`` shapes (random 1..MAX_OBJECTS when None)."""
    base = rng.integers(0, BACKGROUND_MAX - 20, size=3)
    noise = rng.integers(0, 21, size=(size, size, 3))
    image = Image.fromarray((base + noise).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(image)
    count = int(rng.integers(1, MAX_OBJECTS + 1)) if objects is None else objects
    lines: list[str] = []
    taken: list[tuple[int, int, int, int]] = []
    for _ in range(count):
        shape = int(rng.integers(len(SHAPE_NAMES)))
        placed = _place(rng, size, SHAPE_NAMES[shape] == "circle", taken)
        if placed is None:
            continue  # no free spot: fewer objects, never an occluded one
        left, top, width, height = placed
        taken.append(placed)
        colour = tuple(int(c) for c in rng.integers(SHAPE_MIN, 256, size=3))
        # Pillow's boxes are inclusive: the shape covers pixels left..right, top..bottom.
        right, bottom = left + width - 1, top + height - 1
        if SHAPE_NAMES[shape] == "rectangle":
            draw.rectangle((left, top, right, bottom), fill=colour)
        elif SHAPE_NAMES[shape] == "circle":
            draw.ellipse((left, top, right, bottom), fill=colour)
        else:
            apex = (left + (width - 1) / 2, top)
            draw.polygon([(left, bottom), (right, bottom), apex], fill=colour)
        cx, cy = (left + width / 2) / size, (top + height / 2) / size
        lines.append(f"{shape} {cx:.6f} {cy:.6f} {width / size:.6f} {height / size:.6f}")
    return image, lines
