"""Detection parity: ultralytics' predict on the run's ``.pt`` against the served path, box by box.

The served path is what ``mlp serve`` does with an uploaded image: the letterbox of the bundle's
:class:`~mlp_core.image_spec.ImageEvalSpec`, the ONNX graph, the server's own numpy NMS
(:func:`mlp_serve.detection.non_max_suppression`) at the bundle's default thresholds, and
:meth:`~mlp_core.image_spec.Letterbox.to_original`. The reference is ultralytics' ``predict`` on
``weights/best.pt`` with the same thresholds. Both get the same decoded pixels (Pillow's; BGR for
ultralytics, which takes arrays as OpenCV gives them), so image decoding is not what is compared.

The gate runs twice: at the bundle's default thresholds (what a request gets) and at a low
confidence (:data:`LOW_CONFIDENCE`, ultralytics' ``val`` threshold), where many more boxes, and
the NMS among them, are compared. The images are the run's test split (else val, else train) read from its ``data.yaml``, at most
:data:`MAX_IMAGES`; when the data cannot be found, seeded synthetic images of coloured shapes.

Comparison, per image: detections of the same class are paired greedily by IoU (pairs need
IoU >= 0.5: the same object), then leftovers of different classes (a class mismatch). A pair
must overlap with IoU >= the tolerance's ``iou`` and agree on the score within ``score``. A
detection left without a partner fails the gate unless a threshold explains it: its score is
within ``score`` of the confidence threshold, or of the other side's weakest detection when that
side is full (``max_detections``), or NMS decided it on an IoU within ``nms_iou`` of the IoU
threshold (and the boxes that decision let through). At the noise floor (both scores within
``score`` of the confidence threshold) a pair's class and box are not held to the tolerance
either. Each excuse is counted in the record.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml

from mlp_core.image_spec import ImageEvalSpec
from mlp_serve.detection import DetectionParams, non_max_suppression

MAX_IMAGES = 32
SYNTHETIC_IMAGES = 8
IMAGE_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})
SPLITS = ("test", "val", "train")
PAIR_IOU = 0.5  # two detections closer than this are not the same object
BATCH = 16  # images per onnxruntime run
LOW_CONFIDENCE = 0.001  # ultralytics' val threshold: every box mAP counts


@dataclass(frozen=True)
class DetectionTolerance:
    """What the gate accepts between two detection results."""

    iou: float  # a paired box's IoU with its reference box, at least
    score: float  # a paired score's difference, at most
    nms_iou: float  # an NMS decision this close to the IoU threshold may go either way


DETECTION_TOLERANCES = {
    "fp32": DetectionTolerance(iou=0.99, score=1e-3, nms_iou=0.005),
    "fp16": DetectionTolerance(iou=0.95, score=1e-2, nms_iou=0.05),
}

Detections = list[npt.NDArray[np.float32]]  # per image, [n, 6] rows x1 y1 x2 y2 score class


@dataclass
class DetectionSamples:
    images: list[npt.NDArray[np.uint8]]  # decoded pixels, [H, W, 3] RGB
    source: str


def detection_samples(
    data_path: Path | None, spec: ImageEvalSpec, *, limit: int = MAX_IMAGES
) -> DetectionSamples:
    """The run's own images for the gate, else seeded synthetic ones (the source says which)."""
    found = _dataset_images(data_path) if data_path is not None else None
    if found:
        split, paths = found
        if len(paths) > limit:  # evenly spread, deterministic
            picks = np.linspace(0, len(paths) - 1, limit).round().astype(int)
            paths = [paths[i] for i in picks]
        images = [_decode(path) for path in paths]
        return DetectionSamples(images, f"{len(images)} {split} images of {data_path}")
    images = synthetic_images(spec.crop_size, SYNTHETIC_IMAGES)
    reason = "the run's data was not found" if data_path is None else f"no images in {data_path}"
    return DetectionSamples(images, f"{len(images)} synthetic images ({reason})")


def _dataset_images(data_path: Path) -> tuple[str, list[Path]] | None:
    """The first of test, val and train that holds images, per the dataset's ``data.yaml``."""
    file = data_path / "data.yaml" if data_path.is_dir() else data_path
    try:
        document = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(document, dict):
        return None
    root = file.parent / str(document.get("path") or ".")
    for split in SPLITS:
        entries = document.get(split) or []
        entries = entries if isinstance(entries, list) else [entries]
        paths = [p for entry in entries for p in _images_of(root / str(entry))]
        if paths:
            return split, paths
    return None


def _images_of(source: Path) -> list[Path]:
    # The YOLO layout's split entries: an image folder, a .txt list of images, or one image.
    if source.is_dir():
        return sorted(
            p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
    if source.suffix.lower() == ".txt" and source.is_file():
        lines = source.read_text(encoding="utf-8").splitlines()
        return [source.parent / line.strip() for line in lines if line.strip()]
    return [source] if source.suffix.lower() in IMAGE_SUFFIXES and source.is_file() else []


def _decode(path: Path) -> npt.NDArray[np.uint8]:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def synthetic_images(size: Sequence[int], count: int, *, seed: int = 0) -> list[np.ndarray]:
    """Seeded coloured rectangles and ellipses on grey, ``size`` ``[h, w]`` (Pillow draws)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    height, width = int(size[0]), int(size[1])
    images = []
    for _ in range(count):
        image = Image.new("RGB", (width, height), (114, 114, 114))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(1, 4))):
            w, h = (int(rng.integers(max(2, n // 6), max(3, n // 2))) for n in (width, height))
            x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
            shape((x, y, x + w, y + h), fill=colour)
        images.append(np.asarray(image, dtype=np.uint8))
    return images


# -- the two sides ------------------------------------------------------------------------------


def letterboxed(spec: ImageEvalSpec, images: Sequence[np.ndarray]) -> npt.NDArray[np.float32]:
    """The model inputs the server makes of these images: ``[N, 3, H, W]``."""
    from PIL import Image

    return np.stack([spec.apply(Image.fromarray(image)) for image in images])


def raw_heads(run_network: Any, inputs: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The network's raw heads for ``[N, 3, H, W]`` inputs, :data:`BATCH` images per run;
    ``run_network`` is one onnxruntime run."""
    return np.concatenate(
        [run_network(inputs[i : i + BATCH]) for i in range(0, len(inputs), BATCH)]
    )


def served_detections(
    heads: npt.NDArray[np.float32],
    spec: ImageEvalSpec,
    images: Sequence[np.ndarray],
    params: DetectionParams,
) -> Detections:
    """What the server answers for these raw heads: its NMS, then each image's own pixels."""
    kept = non_max_suppression(heads, params.confidence, params.iou, params.max_detections)
    detections = []
    for image, rows in zip(images, kept):
        box = spec.letterbox(*image.shape[:2])
        out = rows.copy()
        out[:, :4] = box.to_original(rows[:, :4])
        detections.append(out)
    return detections


def ultralytics_detections(
    yolo: Any, images: Sequence[np.ndarray], spec: ImageEvalSpec, params: DetectionParams
) -> Detections:
    """ultralytics' ``predict`` (a loaded ``YOLO``) at the same thresholds, on CPU, fp32."""
    from mlp_models.ultralytics_env import preserved_threads

    with preserved_threads():
        results = yolo.predict(
            source=[np.ascontiguousarray(image[..., ::-1]) for image in images],
            imgsz=list(spec.crop_size),
            conf=params.confidence,
            iou=params.iou,
            max_det=params.max_detections,
            device="cpu",
            half=False,
            verbose=False,
            save=False,
        )
    out = []
    for result in results:
        boxes = result.boxes
        rows = np.zeros((len(boxes), 6), dtype=np.float32)
        if len(boxes):
            rows[:, :4] = boxes.xyxy.cpu().numpy()
            rows[:, 4] = boxes.conf.cpu().numpy()
            rows[:, 5] = boxes.cls.cpu().numpy()
        out.append(rows)
    return out


# -- comparing ---------------------------------------------------------------------------------


def compare_detections(
    reference: Detections,
    candidate: Detections,
    params: DetectionParams,
    tolerance: DetectionTolerance,
) -> dict[str, Any]:
    """The gate's record (see the module docstring); ``passed`` says whether it holds."""
    totals = {"paired": 0, "class_mismatches": 0, "unexplained": 0}
    excused = {"confidence": 0, "max_detections": 0, "nms": 0}
    ious: list[float] = []
    score_gaps: list[float] = []
    failures: list[str] = []
    for index, (ref, got) in enumerate(zip(reference, candidate, strict=True)):
        pairs, crossed = _pairs(ref, got)
        totals["paired"] += len(pairs)
        # At the noise floor (both scores within the tolerance of the confidence threshold)
        # the class and box of a detection are noise too: counted, not held to the tolerance.
        floor = params.confidence + tolerance.score
        for r, s in pairs:
            iou = float(_iou(ref[r : r + 1, :4], got[s : s + 1, :4])[0, 0])
            gap = abs(float(ref[r, 4]) - float(got[s, 4]))
            if iou >= tolerance.iou and gap <= tolerance.score:
                ious.append(iou)
                score_gaps.append(gap)
            elif max(ref[r, 4], got[s, 4]) <= floor:
                excused["confidence"] += 1
            else:
                ious.append(iou)
                score_gaps.append(gap)
                failures.append(
                    f"image {index}: box {_show(ref[r])} served as {_show(got[s])} "
                    f"(IoU {iou:.4f}, score difference {gap:.2g})"
                )
        for r, s in crossed:
            if max(ref[r, 4], got[s, 4]) <= floor:
                excused["confidence"] += 1
                continue
            totals["class_mismatches"] += 1
            failures.append(f"image {index}: box {_show(ref[r])} served as class {int(got[s, 5])}")
        lone_ref = _unpaired(len(ref), [r for r, _ in pairs + crossed])
        lone_got = _unpaired(len(got), [s for _, s in pairs + crossed])
        for side, mine, other, lone, lone_other in (
            ("reference", ref, got, lone_ref, lone_got),
            ("served", got, ref, lone_got, lone_ref),
        ):
            reasons = _excuses(mine, other, lone, lone_other, params, tolerance)
            for position, reason in zip(lone, reasons):
                if reason is None:
                    totals["unexplained"] += 1
                    failures.append(
                        f"image {index}: {side} detection {_show(mine[position])} has no partner"
                    )
                else:
                    excused[reason] += 1
    passed = not failures
    return {
        "images": len(reference),
        "reference_detections": int(sum(len(r) for r in reference)),
        "served_detections": int(sum(len(c) for c in candidate)),
        **totals,
        "excused": excused,
        "min_iou": min(ious, default=1.0),
        "max_score_diff": max(score_gaps, default=0.0),
        "tolerance": {"iou": tolerance.iou, "score": tolerance.score, "nms_iou": tolerance.nms_iou},
        "thresholds": {
            "confidence": params.confidence,
            "iou": params.iou,
            "max_detections": params.max_detections,
        },
        "passed": passed,
        "failures": failures[:10],
    }


def _pairs(ref: np.ndarray, got: np.ndarray) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Same-class pairs by IoU, best first; then cross-class pairs of the leftovers."""
    if not len(ref) or not len(got):
        return [], []
    overlap = _iou(ref[:, :4], got[:, :4])
    same = ref[:, 5][:, None] == got[:, 5][None, :]
    pairs = _greedy(np.where(same, overlap, -1.0), set(), set())
    crossed = _greedy(np.where(same, -1.0, overlap), {r for r, _ in pairs}, {s for _, s in pairs})
    return pairs, crossed


def _greedy(overlap: np.ndarray, used_r: set[int], used_s: set[int]) -> list[tuple[int, int]]:
    order = np.argsort(-overlap, axis=None, kind="stable")
    pairs = []
    used_r, used_s = set(used_r), set(used_s)
    for flat in order:
        r, s = divmod(int(flat), overlap.shape[1])
        if overlap[r, s] < PAIR_IOU:
            break
        if r in used_r or s in used_s:
            continue
        used_r.add(r)
        used_s.add(s)
        pairs.append((r, s))
    return pairs


def _unpaired(count: int, paired: list[int]) -> list[int]:
    taken = set(paired)
    return [i for i in range(count) if i not in taken]


def _excuses(
    mine: np.ndarray,
    other: np.ndarray,
    lone: list[int],
    lone_other: list[int],
    params: DetectionParams,
    tolerance: DetectionTolerance,
) -> list[str | None]:
    """Why each lone detection of ``mine`` may be missing from ``other`` (None: no reason)."""
    reasons: list[str | None] = []
    full = len(other) >= params.max_detections
    weakest = float(other[:, 4].min()) if len(other) else math.inf
    overlap = _iou(mine[:, :4], other[:, :4]) if len(mine) and len(other) else None
    for position in lone:
        score = float(mine[position, 4])
        if score <= params.confidence + tolerance.score:
            reasons.append("confidence")
            continue
        if full and score <= weakest + tolerance.score:
            reasons.append("max_detections")
            continue
        reasons.append("nms" if _nms_decided(position, mine, other, overlap, lone_other,
                                             params, tolerance) else None)  # fmt: skip
    return reasons


def _nms_decided(
    position: int,
    mine: np.ndarray,
    other: np.ndarray,
    overlap: np.ndarray | None,
    lone_other: list[int],
    params: DetectionParams,
    tolerance: DetectionTolerance,
) -> bool:
    """A better box of the same class on the other side overlaps it at the IoU threshold (NMS
    may go either way), or above it while being itself a lone box (the decision let it through
    on one side only)."""
    if overlap is None:
        return False
    row = mine[position]
    stronger = (other[:, 5] == row[5]) & (other[:, 4] >= row[4] - tolerance.score)
    near = np.abs(overlap[position] - params.iou) <= tolerance.nms_iou
    if bool(np.any(stronger & near)):
        return True
    lone = np.zeros(len(other), dtype=bool)
    lone[lone_other] = True
    return bool(np.any(stronger & lone & (overlap[position] > params.iou)))


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    width = np.minimum(a64[:, None, 2], b64[None, :, 2]) - np.maximum(
        a64[:, None, 0], b64[None, :, 0]
    )
    height = np.minimum(a64[:, None, 3], b64[None, :, 3]) - np.maximum(
        a64[:, None, 1], b64[None, :, 1]
    )
    inter = np.clip(width, 0, None) * np.clip(height, 0, None)
    area_a = (a64[:, 2] - a64[:, 0]) * (a64[:, 3] - a64[:, 1])
    area_b = (b64[:, 2] - b64[:, 0]) * (b64[:, 3] - b64[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        overlap = np.where(union > 0, inter / union, 0.0)
    # Boxes clipped flat (wholly in the letterbox's padding: ultralytics keeps them too) have no
    # area: two flat boxes overlap as their extents along each axis do.
    flat = union <= 0
    if np.any(flat):
        extent = np.ones_like(overlap)
        for low, high in ((0, 2), (1, 3)):
            extent *= _extent_iou(a64[:, low], a64[:, high], b64[:, low], b64[:, high])
        overlap = np.where(flat, extent, overlap)
    return overlap


def _extent_iou(
    a_low: np.ndarray, a_high: np.ndarray, b_low: np.ndarray, b_high: np.ndarray
) -> np.ndarray:
    """The IoU of intervals, all pairs; two points are the same (1) within 0.01 px."""
    inter = np.minimum(a_high[:, None], b_high[None, :]) - np.maximum(
        a_low[:, None], b_low[None, :]
    )
    union = np.maximum(a_high[:, None], b_high[None, :]) - np.minimum(
        a_low[:, None], b_low[None, :]
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.clip(inter, 0, None) / union
    points = (a_high - a_low)[:, None] + (b_high - b_low)[None, :] <= 0
    return np.where(points, (union <= 0.01).astype(np.float64), np.where(union > 0, ratio, 0.0))


def _show(row: np.ndarray) -> str:
    box = ", ".join(f"{v:.1f}" for v in row[:4])
    return f"[{box}] class {int(row[5])} score {float(row[4]):.3f}"
