"""Detection serving: images/s of `mlp serve` against ultralytics' in-process predict, same weights.

One run measures, alternating cells round by round so that machine noise hits all alike:

- ``ultralytics``: ``YOLO(weights.pt).predict`` in this process on decoded images, one image per
  call (concurrency 1) and eight images per call (its own batching: the in-process answer to
  concurrency 8); torch on one thread.
- ``onnxruntime``: the bundle's ONNX in this process on letterboxed tensors, then the server's
  numpy NMS (:func:`mlp_serve.detection.non_max_suppression`): the work the server must do,
  with nothing around it.
- ``rest upload``: ``POST /v1/models/{m}/predict/image`` with a PNG per request (the server
  decodes, letterboxes, runs, does NMS and maps the boxes back), at concurrency 1 and 8.
- ``grpc tensors``: the Open Inference Protocol's ``ModelInfer`` (tritonclient) with a
  letterboxed FP32 tensor per request, answered with the Triton-convention outputs, at 1 and 8.

The server is a subprocess (``python -m mlp_serve``) on core 0 with one onnxruntime thread and
dynamic batching on (its defaults otherwise); the clients run in this process on core 1; the
in-process cells run on core 0 with one thread. The added latency per image is the server's p50
at concurrency 1 minus the in-process p50 of the same work.

    .venv/bin/python tools/bench/bench_detection.py --run runs/shapes-...   # a trained run
    .venv/bin/python tools/bench/bench_detection.py                           # an untrained yolov8n
    .venv/bin/python tools/bench/bench_detection.py --imgsz 320 --provider CUDAExecutionProvider

With ``--run``, the bundle is what ``mlp export RUN`` writes, the weights are the run's
``weights/best.pt`` and the images its test split's. Without it, a yolov8n for 3 classes is built (its class biases raised so
that, untrained, it still finds boxes for the NMS to sort), saved as an ultralytics checkpoint and
exported by ultralytics' own ONNX export (raw head, dynamic axes, no NMS), with a manifest
written here. Not a test: nothing is asserted about time.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import tritonclient.grpc as triton_grpc
from PIL import Image, ImageDraw

from mlp_core.files import sha256_file
from mlp_core.image_spec import ImageEvalSpec
from mlp_serve.detection import non_max_suppression

ROOT = Path(__file__).resolve().parents[2]
MODEL = "detector"
CLASSES = ["rectangle", "circle", "triangle"]
STARTUP = re.compile(r"mlp serve: REST on (http://\S+), gRPC on (\S+)")
SERVER_CORE, CLIENT_CORE = 0, 1


# -- the model ---------------------------------------------------------------------------


def spec_of_runs(imgsz: int) -> ImageEvalSpec:
    """The letterbox spec `mlp train` writes into a detection run (torch comes with mlp_data)."""
    from mlp_data.detection.adapter import letterbox_spec

    return letterbox_spec(imgsz)


def bundle_from_run(run: Path, repo: Path) -> tuple[Path, Path]:
    """``mlp export RUN`` into ``repo``; (the version folder, the run's weights/best.pt)."""
    mlp = Path(sys.executable).parent / "mlp"
    subprocess.run(
        [str(mlp), "export", str(run), "--repo", str(repo), "--name", MODEL],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return repo / MODEL / "1", run / "weights" / "best.pt"


def untrained_bundle(repo: Path, work: Path, imgsz: int) -> tuple[Path, Path]:
    """A yolov8n for 3 classes, as an ultralytics checkpoint and a bundle of its ONNX export."""
    import torch

    from mlp_models.ultralytics_env import import_ultralytics

    ultralytics = import_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    network = DetectionModel("yolov8n.yaml", nc=len(CLASSES), verbose=False)
    network.names = dict(enumerate(CLASSES))
    layers: Any = network.model
    head = layers[-1]  # ultralytics' Detect
    for branch in head.cv3:  # the class branches: untrained scores near sigmoid(-0.5) = 0.38
        branch[-1].bias.data.fill_(-0.5)
    weights = work / "untrained.pt"
    checkpoint = {"model": network.half(), "train_args": {"imgsz": imgsz, "task": "detect"}}
    torch.save(checkpoint, weights)
    onnx_file = ultralytics.YOLO(str(weights), task="detect").export(
        format="onnx", imgsz=imgsz, dynamic=True, simplify=False, opset=17, verbose=False
    )
    folder = repo / MODEL / "1"
    folder.mkdir(parents=True)
    shutil.copyfile(onnx_file, folder / "model.onnx")
    anchors = sum((imgsz // s) ** 2 for s in (8, 16, 32))
    manifest = {
        "name": MODEL,
        "version": 1,
        "task": "detection",
        "kind": "detection",
        "inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, 3, -1, -1]}],
        "outputs": [{"name": "output0", "datatype": "FP32", "shape": [-1, 7, anchors]}],
        "class_labels": CLASSES,
        "detection": {"confidence": 0.25, "iou": 0.7, "max_detections": 300},
        "preprocessing": spec_of_runs(imgsz).to_dict(),
        "sha256": sha256_file(folder / "model.onnx"),
        "opset": 17,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder, weights


def shapes_images(count: int, size: int, seed: int = 0) -> list[Image.Image]:
    """Coloured rectangles, circles and triangles on a noisy background, ``size`` square."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        background = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
        image = Image.fromarray(background)
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(1, 4))):
            x, y = rng.integers(0, size * 3 // 4, 2)
            w, h = rng.integers(size // 8, size // 3, 2)
            colour = tuple(int(c) for c in rng.integers(120, 256, 3))
            shape = int(rng.integers(0, 3))
            box = (int(x), int(y), int(x + w), int(y + h))
            if shape == 0:
                draw.rectangle(box, fill=colour)
            elif shape == 1:
                draw.ellipse(box, fill=colour)
            else:
                draw.polygon(
                    [(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])],
                    fill=colour,
                )
        images.append(image)
    return images


def run_images(run: Path, count: int) -> list[Image.Image]:
    """The run's own images (test, else val, else train, as the export gate finds them), up to
    ``count``: its dataset given as a folder or as a data.yaml."""
    import yaml

    from mlp_serve.export.detection_parity import detection_samples

    data = Path(yaml.safe_load((run / "config.yaml").read_text())["data"]["path"])
    data = data if data.is_absolute() else ROOT / data
    samples = detection_samples(data, spec_of_runs(64), limit=count)
    if "synthetic" in samples.source:
        raise SystemExit(f"no images in the dataset of {run} ({data})")
    return [Image.fromarray(pixels) for pixels in samples.images]


# -- the server --------------------------------------------------------------------------


def start_server(repo: Path, provider: str) -> tuple[subprocess.Popen[str], str, str]:
    command = [
        sys.executable, "-m", "mlp_serve", str(repo),
        "--http-port", "0", "--grpc-port", "0", "--log-level", "WARNING",
        "--set", "poll_seconds=null",
        "--set", f"providers=[{provider}]",
        "--set", "intra_op_threads=1",
    ]  # fmt: skip
    if shutil.which("taskset") and provider == "CPUExecutionProvider":
        command = ["taskset", "-c", str(SERVER_CORE), *command]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None
    for line in process.stdout:
        match = STARTUP.search(line)
        if match:
            return process, match.group(1), match.group(2)
    raise SystemExit("the server printed no startup line")


# -- cells -------------------------------------------------------------------------------


class Cell:
    """One measured configuration: ``call()`` handles ``per_call`` images."""

    def __init__(
        self,
        name: str,
        concurrency: int,
        make_call: Callable[[], Callable[[int], None]],
        per_call: int = 1,
    ) -> None:
        self.name, self.concurrency, self.per_call = name, concurrency, per_call
        self.make_call = make_call
        self.rates: list[float] = []
        self.latencies: list[float] = []

    def measure(self, seconds: float) -> None:
        calls = [self.make_call() for _ in range(self.concurrency)]
        for call in calls:
            call(0)  # warm: connections, first-run allocations
        stop = time.perf_counter() + seconds
        counts = [0] * self.concurrency
        latencies: list[list[float]] = [[] for _ in range(self.concurrency)]

        def worker(index: int) -> None:
            call, turn = calls[index], index
            while time.perf_counter() < stop:
                start = time.perf_counter()
                call(turn)
                latencies[index].append(time.perf_counter() - start)
                counts[index] += self.per_call
                turn += self.concurrency

        started = time.perf_counter()
        if self.concurrency == 1:
            worker(0)
        else:
            with ThreadPoolExecutor(self.concurrency) as pool:
                list(pool.map(worker, range(self.concurrency)))
        elapsed = time.perf_counter() - started
        self.rates.append(sum(counts) / elapsed)
        self.latencies += [t for part in latencies for t in part]

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies) * 1000 / self.per_call


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--run", type=Path, help="a trained detection run (default: untrained)")
    parser.add_argument("--imgsz", type=int, default=64, help="untrained model's input side")
    parser.add_argument("--images", type=int, default=32, help="distinct images sent in turn")
    parser.add_argument("--seconds", type=float, default=2.0, help="per cell and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--provider", default="CPUExecutionProvider")
    parser.add_argument("--json", type=Path, help="also write the table here")
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    from mlp_models.ultralytics_env import import_ultralytics

    ultralytics = import_ultralytics()
    work = Path(tempfile.mkdtemp(prefix="bench-detection-"))
    repo = work / "repo"
    if args.run is not None:
        folder, weights = bundle_from_run(args.run, repo)
    else:
        folder, weights = untrained_bundle(repo, work, args.imgsz)
    manifest = json.loads((folder / "manifest.json").read_text())
    spec = ImageEvalSpec.model_validate(manifest["preprocessing"])
    imgsz = spec.crop_size[0]
    defaults = manifest.get("detection") or {"confidence": 0.25, "iou": 0.7, "max_detections": 300}
    images = run_images(args.run, args.images) if args.run else shapes_images(args.images, imgsz)
    pngs = []
    for image in images:
        data = io.BytesIO()
        image.save(data, format="PNG")
        pngs.append(data.getvalue())
    bgr = [np.ascontiguousarray(np.asarray(image)[..., ::-1]) for image in images]
    tensors = [spec.apply(image)[None] for image in images]

    # In-process: one thread each, on the server's core.
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {SERVER_CORE})
    torch.set_num_threads(1)
    yolo = ultralytics.YOLO(str(weights), task="detect")
    device = "0" if args.provider == "CUDAExecutionProvider" else "cpu"
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        str(folder / "model.onnx"),
        options,
        providers=list(dict.fromkeys([args.provider, "CPUExecutionProvider"])),
    )
    input_name = session.get_inputs()[0].name
    found = [
        len(r.boxes)
        for r in yolo.predict(
            bgr[:8], imgsz=imgsz, device=device, verbose=False, **_predict_args(defaults)
        )
    ]

    def ultralytics_cell(per_call: int) -> Callable[[], Callable[[int], None]]:
        def make() -> Callable[[int], None]:
            def call(turn: int) -> None:
                first = (turn * per_call) % len(bgr)
                batch = [bgr[(first + i) % len(bgr)] for i in range(per_call)]
                yolo.predict(
                    batch, imgsz=imgsz, device=device, verbose=False, **_predict_args(defaults)
                )

            return call

        return make

    def onnxruntime_cell() -> Callable[[int], None]:
        def call(turn: int) -> None:
            raw = np.asarray(session.run(None, {input_name: tensors[turn % len(tensors)]})[0])
            non_max_suppression(
                raw, defaults["confidence"], defaults["iou"], defaults["max_detections"]
            )

        return call

    process, http_url, grpc_address = start_server(repo, args.provider)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {CLIENT_CORE})

    def rest_cell() -> Callable[[int], None]:
        client = httpx.Client(base_url=http_url, timeout=60)

        def call(turn: int) -> None:
            files = {"file": ("x.png", pngs[turn % len(pngs)], "image/png")}
            reply = client.post(f"/v1/models/{MODEL}/predict/image", files=files)
            reply.raise_for_status()

        return call

    def grpc_cell() -> Callable[[int], None]:
        client = triton_grpc.InferenceServerClient(grpc_address)

        def call(turn: int) -> None:
            tensor = tensors[turn % len(tensors)]
            infer_input = triton_grpc.InferInput(input_name, list(tensor.shape), "FP32")
            infer_input.set_data_from_numpy(tensor)
            client.infer(MODEL, [infer_input])

        return call

    in_process = [
        Cell("ultralytics predict, 1 image/call", 1, ultralytics_cell(1)),
        Cell("ultralytics predict, 8 images/call", 1, ultralytics_cell(8), per_call=8),
        Cell("onnxruntime + numpy NMS in process", 1, onnxruntime_cell),
    ]
    served = [
        Cell("mlp serve REST upload", 1, rest_cell),
        Cell("mlp serve REST upload", 8, rest_cell),
        Cell("mlp serve gRPC tensors", 1, grpc_cell),
        Cell("mlp serve gRPC tensors", 8, grpc_cell),
    ]
    try:
        for round_index in range(args.rounds):
            order = in_process + served
            order = order[round_index % len(order) :] + order[: round_index % len(order)]
            for cell in order:
                pinned = SERVER_CORE if cell in in_process else CLIENT_CORE
                if hasattr(os, "sched_setaffinity"):
                    os.sched_setaffinity(0, {pinned})
                cell.measure(args.seconds)
    finally:
        process.terminate()
        process.wait(30)
        shutil.rmtree(work, ignore_errors=True)

    source = f"run {args.run}" if args.run else "untrained yolov8n (class bias -0.5)"
    print(
        f"{source}, imgsz {imgsz}, {args.provider}, {args.images} images, boxes per image (first 8): {found}"
    )
    print(
        f"{args.rounds} rounds x {args.seconds:g} s per cell, medians; server on core {SERVER_CORE}, clients on core {CLIENT_CORE}"
    )
    print(f"{'':40} {'conc':>4} {'images/s':>9} {'p50 ms/img':>10}")
    rows = []
    for cell in in_process + served:
        print(f"{cell.name:40} {cell.concurrency:>4} {cell.rate:>9.1f} {cell.p50_ms:>10.2f}")
        rows.append(
            {
                "cell": cell.name,
                "concurrency": cell.concurrency,
                "images_per_s": cell.rate,
                "p50_ms": cell.p50_ms,
            }
        )
    ultra1, ultra8, ort_cell = in_process
    rest1, rest8, grpc1, grpc8 = served
    print()
    print(f"REST upload c=1 / ultralytics 1 image/call : {rest1.rate / ultra1.rate:.2f}")
    print(f"gRPC tensors c=1 / ultralytics 1 image/call: {grpc1.rate / ultra1.rate:.2f}")
    print(f"REST upload c=8 / ultralytics 8 images/call: {rest8.rate / ultra8.rate:.2f}")
    print(f"gRPC tensors c=8 / ultralytics 8 images/call: {grpc8.rate / ultra8.rate:.2f}")
    print(
        f"server's added p50 per image, gRPC tensors c=1: {grpc1.p50_ms - ort_cell.p50_ms:.2f} ms (over onnxruntime + NMS in process)"
    )
    print(
        f"server's added p50 per image, REST upload c=1 : {rest1.p50_ms - ort_cell.p50_ms:.2f} ms (incl. PNG decode and letterbox)"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def _predict_args(defaults: dict) -> dict:
    return {
        "conf": defaults["confidence"],
        "iou": defaults["iou"],
        "max_det": defaults["max_detections"],
    }


if __name__ == "__main__":
    main()
