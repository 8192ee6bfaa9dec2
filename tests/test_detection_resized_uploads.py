"""Uploads of any size to a served detection bundle get ultralytics' own boxes.

The letterbox must feed the network exactly what ultralytics' ``LetterBox`` feeds it (one grey
level on a few pixels moves an untrained network's scores by up to 0.1): its resize is
OpenCV's ``INTER_LINEAR`` to the bit, checked here against ``cv2.resize`` itself. Then an
exported bundle (the hand-made run of detection_export_helpers: dozens of boxes per image)
served in process answers ``POST /v1/models/{m}/predict/image`` with the boxes of
``YOLO(weights/best.pt).predict(path)`` for images that are not the model's size.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from detection_export_helpers import IMGSZ, shapes_image, write_detection_run, write_shapes_data
from serve_helpers import cpu_config

from mlp_core.image_spec import linear_resize
from mlp_models.ultralytics_env import import_ultralytics, preserved_threads
from mlp_serve.export import export_run
from mlp_serve.server import BackgroundServer

# [h, w] of the uploads: shrunk, halved, shrunk by an odd ratio, wide, grown, and 64 x 64.
UPLOAD_SIZES = [(48, 80), (128, 96), (200, 150), (40, 90), (36, 30), (64, 64)]


def resize_cases() -> list[tuple[tuple[int, int, int], tuple[int, int]]]:
    """Seeded (source [h, w, c], target [h, w]) pairs, with halvings (OpenCV's area path),
    integer growths, a single row or column, and grey images."""
    rng = np.random.default_rng(0)
    cases = [((128, 96, 3), (64, 48)), ((10, 10, 3), (40, 30)), ((1, 50, 3), (3, 17))]
    cases += [((37, 1, 1), (12, 5)), ((640, 480, 3), (64, 48)), ((17, 301, 3), (4, 64))]
    for _ in range(60):
        height, width, out_h, out_w = (int(n) for n in rng.integers(1, [300, 300, 120, 120]))
        cases.append(((height, width, int(rng.choice([1, 3]))), (out_h, out_w)))
    return cases


def test_the_letterbox_resize_is_opencvs_to_the_bit():
    rng = np.random.default_rng(1)
    for source, (height, width) in resize_cases():
        pixels = rng.integers(0, 256, source, dtype=np.uint8)
        theirs = cv2.resize(pixels, (width, height), interpolation=cv2.INTER_LINEAR)
        ours = linear_resize(pixels, height, width)
        assert np.array_equal(ours, theirs.reshape(ours.shape)), (source, (height, width))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(the run folder, the server's REST URL): the hand-made run exported and served."""
    root = tmp_path_factory.mktemp("uploads")
    run = write_detection_run(root / "run", data=write_shapes_data(root / "shapes"))
    export_run(run, root / "repo", name="shapes", log_to_mlflow=False)
    with BackgroundServer(root / "repo", cpu_config()) as server:
        yield run, server.http_url


def uploads(folder: Path) -> list[Path]:
    folder.mkdir()
    rng = np.random.default_rng(5)
    paths = []
    for index, size in enumerate(UPLOAD_SIZES):
        path = folder / f"upload_{index}.png"
        shapes_image(rng, size).save(path)
        paths.append(path)
    return paths


def unmatched(reference: np.ndarray, served: list[dict]) -> list[str]:
    """Reference rows (x1 y1 x2 y2 score class) without a served detection of their class
    within 1 px per coordinate and 1e-3 in score (each served one matched once)."""
    free = list(served)
    missing = []
    for row in reference:
        match = next(
            (
                d
                for d in free
                if d["class_id"] == int(row[5])
                and abs(d["score"] - float(row[4])) <= 1e-3
                and np.abs(np.asarray(d["box"]) - row[:4]).max() <= 1.0
            ),
            None,
        )
        if match is None:
            missing.append(f"{row[:4].round(2).tolist()} class {int(row[5])} score {row[4]:.4f}")
        else:
            free.remove(match)
    return missing


def test_uploads_of_other_sizes_get_ultralytics_boxes(served, tmp_path):
    run, url = served
    paths = uploads(tmp_path / "uploads")
    ultralytics = import_ultralytics()
    with preserved_threads():
        yolo = ultralytics.YOLO(str(run / "weights" / "best.pt"))
        results = yolo.predict([str(p) for p in paths], imgsz=IMGSZ, device="cpu", verbose=False)
    compared = 0
    for path, result in zip(paths, results):
        boxes = result.boxes
        reference = np.concatenate(
            [boxes.xyxy.numpy(), boxes.conf.numpy()[:, None], boxes.cls.numpy()[:, None]], axis=1
        )
        files = {"file": (path.name, path.read_bytes(), "image/png")}
        reply = httpx.post(f"{url}/v1/models/shapes/predict/image", files=files, timeout=60)
        assert reply.status_code == 200, reply.text
        [found] = reply.json()["predictions"]
        assert len(found) == len(reference), path.name
        assert unmatched(reference, found) == [], path.name
        compared += len(found)
    assert compared >= 10 * len(UPLOAD_SIZES)  # real boxes, not an empty agreement
