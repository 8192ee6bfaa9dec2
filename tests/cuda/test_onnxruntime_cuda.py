"""onnxruntime's CUDA provider: exported runs, in process and through `mlp serve`, answer as the
CPU provider does on the same real inputs (max |diff| of the probabilities, argmax agreement),
and the provider each model really got is checked, never assumed. Latency is printed only."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cuda_helpers import DIGITS, DIGITS_DATA, PENGUINS, PENGUINS_CSV, QUIET, mlp_command

pytestmark = pytest.mark.cuda

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
ROWS = 64  # real samples compared per bundle
TIMED_REQUESTS = 200
# A float32 model on CUDA may use TF32 matmuls (onnxruntime's default on Ampere and later), so
# its probabilities differ from the CPU's in the third decimal; fp16 weights in the second. A class
# flips only where two classes were nearly tied.
TOLERANCES = {"fp32": (1e-2, 0.98), "fp16": (5e-2, 0.95)}  # (max |diff|, argmax agreement)
ONNX_TO_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.float16): "FP16", np.dtype(object): "BYTES"}


@dataclass
class Bundle:
    name: str
    precision: str  # a key of TOLERANCES
    model: Path  # model.onnx
    feeds: dict[str, np.ndarray]  # ROWS real samples, by input name


@pytest.fixture(scope="session")
def ort():
    import onnxruntime

    # onnxruntime-gpu finds CUDA and cuDNN in the nvidia wheels torch brought (mlp serve does this too).
    if hasattr(onnxruntime, "preload_dlls"):
        onnxruntime.preload_dlls()
    available = onnxruntime.get_available_providers()
    print(f"\nonnxruntime {onnxruntime.__version__}: {available}")
    assert CUDA in available, (
        "this onnxruntime has no CUDA provider: install onnxruntime-gpu (tools/gpu/install.sh)"
    )
    return onnxruntime


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> list[Bundle]:
    """penguins (tabular) and digits (a CNN, also exported in fp16), trained on the GPU."""
    from mlp_serve.export import export_run
    from mlp_train.run import train

    root = tmp_path_factory.mktemp("ort-cuda")
    penguins = train(
        PENGUINS,
        [f"data.path={PENGUINS_CSV}", *QUIET, "training.device=cuda", "training.epochs=10"],
        runs_root=root / "runs",
    ).run_dir
    digits = train(
        DIGITS,
        [f"data.path={DIGITS_DATA}", *QUIET, "training.device=cuda", "training.epochs=2",
         "training.precision=bf16"],
        runs_root=root / "runs",
    ).run_dir  # fmt: skip
    repo = root / "repo"
    made = []
    for run, name, fp16, feeds in [
        (penguins, "penguins", False, tabular_feeds),
        (digits, "digits", False, image_feeds),
        (digits, "digits_fp16", True, image_feeds),
    ]:
        exported = export_run(run, repo, name=name, fp16=fp16, log_to_mlflow=False)
        model = exported.path / "model.onnx"
        preprocessing = json.loads((run / "preprocessing.json").read_text())
        made.append(Bundle(name, "fp16" if fp16 else "fp32", model, feeds(model, preprocessing)))
    return made


def input_types(model: Path) -> dict[str, str]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model), providers=[CPU])
    return {i.name: i.type for i in session.get_inputs()}


def tabular_feeds(model: Path, preprocessing: dict[str, Any]) -> dict[str, np.ndarray]:
    """Complete rows of penguins.csv: the numeric columns as floats, the categorical as text."""
    from mlp_core.tabular_spec import TabularPreprocessing

    document = TabularPreprocessing.parse(preprocessing["preprocessor"])
    numeric, categorical = document.numeric_names, document.categorical_names
    with PENGUINS_CSV.open(newline="") as file:
        rows = [r for r in csv.DictReader(file) if all(r[c] not in ("", "NA") for c in r)][:ROWS]
    by_type = {
        "tensor(float)": np.array([[float(r[c]) for c in numeric] for r in rows], np.float32),
        "tensor(string)": np.array([[r[c] for c in categorical] for r in rows], dtype=object),
    }
    return {name: by_type[kind] for name, kind in input_types(model).items()}


def image_feeds(model: Path, preprocessing: dict[str, Any]) -> dict[str, np.ndarray]:
    """PNGs of every digit through the run's evaluation transform (mlp_core's reference)."""
    from PIL import Image

    from mlp_core.image_spec import ImageEvalSpec

    spec = ImageEvalSpec.parse(preprocessing)
    files = sorted(DIGITS_DATA.glob("*/*.png"))
    files = files[:: max(1, len(files) // ROWS)][:ROWS]  # every class
    pixels = np.stack([spec.apply(Image.open(f)) for f in files])
    ((name, kind),) = input_types(model).items()
    return {name: pixels.astype(ONNX_TO_NUMPY[kind])}


def probabilities(outputs: dict[str, np.ndarray]) -> np.ndarray:
    values = outputs.get("probabilities")
    if values is None:  # a bundle without that output: its first numeric one
        values = next(v for v in outputs.values() if v.dtype.kind == "f")
    return values.astype(np.float64)


def compare(name: str, where: str, got: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    diff = float(np.abs(got - expected).max())
    agreement = float((got.argmax(axis=1) == expected.argmax(axis=1)).mean())
    print(f"{name:12} {where:28} max|diff| vs CPU {diff:.2e}, argmax agreement {agreement:.3f}")
    return diff, agreement


def run_session(session, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def p50_ms(call: Callable[[], object], count: int = TIMED_REQUESTS) -> float:
    for _ in range(10):
        call()
    times = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def test_cuda_provider_matches_cpu_in_process(ort, bundles):
    for bundle in bundles:
        cpu = ort.InferenceSession(str(bundle.model), providers=[CPU])
        gpu = ort.InferenceSession(str(bundle.model), providers=[CUDA, CPU])
        assert gpu.get_providers()[0] == CUDA, f"{bundle.name}: got {gpu.get_providers()}"
        expected = probabilities(run_session(cpu, bundle.feeds))
        got = probabilities(run_session(gpu, bundle.feeds))
        diff, agreement = compare(bundle.name, f"in process ({bundle.precision})", got, expected)
        max_diff, min_agreement = TOLERANCES[bundle.precision]
        assert diff <= max_diff and agreement >= min_agreement, bundle.name


@pytest.fixture
def server(bundles, tmp_path) -> Iterator[str]:
    """`mlp serve` on the exported repository (CUDA first: the default providers); its REST URL."""
    repo = bundles[0].model.parents[2]
    log_path = tmp_path / "serve.log"
    # The log goes to a file: a pipe nobody reads fills up and then blocks the server.
    with log_path.open("w") as log:
        process = subprocess.Popen(
            mlp_command("serve", str(repo), "--http-port", "0", "--grpc-port", "0"),
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
        )  # fmt: skip
        try:
            yield wait_for_rest(process, log_path)
        finally:
            process.terminate()
            code = process.wait(60)
    assert code == 0, f"mlp serve exited {code} after SIGTERM:\n{log_path.read_text()[-3000:]}"


def wait_for_rest(process: subprocess.Popen, log_path: Path) -> str:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        for line in log_path.read_text().splitlines():
            if "REST on " in line:
                print(f"\n{line.strip()}")
                return line.split("REST on ")[1].split(",")[0].strip()
        if process.poll() is not None:
            break
        time.sleep(0.5)
    raise AssertionError(f"mlp serve never got ready:\n{log_path.read_text()[-3000:]}")


def rest(url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as reply:
        return json.loads(reply.read())


def infer_body(feeds: dict[str, np.ndarray]) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": name, "datatype": DATATYPES[values.dtype], "shape": list(values.shape),
             "data": values.reshape(-1).tolist()}
            for name, values in feeds.items()
        ]
    }  # fmt: skip


def test_mlp_serve_answers_on_the_cuda_provider_as_the_cpu_does(ort, bundles, server):
    figures = []
    for bundle in bundles:
        base = f"{server}/v2/models/{bundle.name}"
        config = rest(f"{base}/config")
        provider = config["parameters"]["execution_provider"]["string_value"]
        assert provider == CUDA, f"{bundle.name} was loaded on {provider}"
        reply = rest(f"{base}/infer", infer_body(bundle.feeds))
        served = {
            o["name"]: np.asarray(o["data"]).reshape(o["shape"])
            for o in reply["outputs"]
            if o["datatype"] != "BYTES"
        }
        cpu = ort.InferenceSession(str(bundle.model), providers=[CPU])
        expected = probabilities(run_session(cpu, bundle.feeds))
        diff, agreement = compare(bundle.name, f"mlp serve, REST ({bundle.precision})",
                                  probabilities(served), expected)  # fmt: skip
        max_diff, min_agreement = TOLERANCES[bundle.precision]
        assert diff <= max_diff and agreement >= min_agreement, bundle.name

        one = {name: values[:1] for name, values in bundle.feeds.items()}
        gpu = ort.InferenceSession(str(bundle.model), providers=[CUDA, CPU])
        in_process = p50_ms(lambda gpu=gpu, one=one: gpu.run(None, one))
        body = infer_body(one)
        served_p50 = p50_ms(lambda base=base, body=body: rest(f"{base}/infer", body))
        figures.append((bundle.name, bundle.precision, in_process, served_p50))
    print(f"\n{'model':12} {'prec':5} {'in-process p50':>15} {'REST p50':>10} {'added':>8}")
    for name, precision, in_process, served_p50 in figures:
        added = served_p50 - in_process
        print(f"{name:12} {precision:5} {in_process:13.3f}ms {served_p50:8.3f}ms {added:6.2f}ms")
