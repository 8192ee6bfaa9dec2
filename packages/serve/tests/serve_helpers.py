"""Tiny real ONNX models and bundles for the serve tests, built with ``onnx.helper``.

Imported by name (``from serve_helpers import ...``); the fixtures live in conftest.py.
"""

from __future__ import annotations

import ctypes
import json
import logging
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mlp_core.files import sha256_file
from mlp_obs.gpu import GpuUnavailable, read_gpus
from mlp_serve.config import ServeConfig

OPSET = 17
RNG = np.random.default_rng(0)
# y = x @ W + b, the fixtures' linear model.
W = RNG.normal(size=(4, 3)).astype(np.float32)
B = RNG.normal(size=(3,)).astype(np.float32)


def _model(nodes, inputs, outputs, initializers=(), ml: bool = False) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    opsets = [helper.make_opsetid("", OPSET)]
    if ml:
        opsets.append(helper.make_opsetid("ai.onnx.ml", 3))
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8  # readable by every onnxruntime >= 1.14
    onnx.checker.check_model(model)
    return model


def linear_model(w: np.ndarray = W, b: np.ndarray = B) -> onnx.ModelProto:
    """FP32 x [-1, 4] -> y [-1, 3] = x @ w + b."""
    return _model(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )


def int_model() -> onnx.ModelProto:
    """INT64 a [-1, 2] -> doubled [-1, 2], total [-1, 1] (two outputs)."""
    two = numpy_helper.from_array(np.array(2, dtype=np.int64), "two")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    return _model(
        [
            helper.make_node("Mul", ["a", "two"], ["doubled"]),
            helper.make_node("ReduceSum", ["a", "axes"], ["total"], keepdims=1),
        ],
        [helper.make_tensor_value_info("a", TensorProto.INT64, [None, 2])],
        [
            helper.make_tensor_value_info("doubled", TensorProto.INT64, [None, 2]),
            helper.make_tensor_value_info("total", TensorProto.INT64, [None, 1]),
        ],
        [two, axes],
    )


def string_model() -> onnx.ModelProto:
    """BYTES text [-1, 1] -> same text, and its id from a fixed vocabulary (-1 unseen)."""
    return _model(
        [
            helper.make_node("Identity", ["text"], ["echo"]),
            helper.make_node(
                "LabelEncoder",
                ["text"],
                ["id"],
                domain="ai.onnx.ml",
                keys_strings=["cat", "dog", "émeu"],
                values_int64s=[0, 1, 2],
                default_int64=-1,
            ),
        ],
        [helper.make_tensor_value_info("text", TensorProto.STRING, [None, 1])],
        [
            helper.make_tensor_value_info("echo", TensorProto.STRING, [None, 1]),
            helper.make_tensor_value_info("id", TensorProto.INT64, [None, 1]),
        ],
        ml=True,
    )


def slow_model(steps: int = 40, size: int = 384, width: int | None = 4) -> onnx.ModelProto:
    """FP32 x [-1, width] -> y = x (+ 0), after ``steps`` chained [size, size] matrix products.

    The chain starts from the input so onnxruntime cannot fold it away at load: every run pays
    for it. Slow by construction, for the queue-full and drain tests.
    """
    a = numpy_helper.from_array(
        (RNG.normal(size=(size, size)) / np.sqrt(size)).astype(np.float32), "a"
    )
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], keepdims=0),
        helper.make_node("Mul", ["a", "m"], ["c0"]),
    ]
    for i in range(steps):
        nodes.append(helper.make_node("MatMul", [f"c{i}", "a"], [f"p{i}"]))
        nodes.append(helper.make_node("Tanh", [f"p{i}"], [f"c{i + 1}"]))
    nodes += [
        helper.make_node("ReduceMean", [f"c{steps}"], ["s"], keepdims=0),
        helper.make_node("Mul", ["s", "zero"], ["tiny"]),
        helper.make_node("Add", ["x", "tiny"], ["y"]),
    ]
    zero = numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, width])],
        [a, zero],
    )


def write_bundle(
    repo: Path,
    name: str,
    version: int,
    model: onnx.ModelProto | bytes,
    *,
    manifest: bool = True,
    sha256: str | None = None,
    **fields,
) -> Path:
    """Write ``repo/name/version/model.onnx`` and, unless ``manifest=False``, its manifest."""
    folder = repo / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    data = model if isinstance(model, bytes) else model.SerializeToString()
    (folder / "model.onnx").write_bytes(data)
    if manifest:
        signature = _signature(model) if not isinstance(model, bytes) else ([], [])
        document = {
            "name": name,
            "version": version,
            "task": "regression",
            "kind": "onnx",
            "inputs": signature[0],
            "outputs": signature[1],
            "sha256": sha256 or sha256_file(folder / "model.onnx"),
            "opset": OPSET,
            **fields,
        }
        (folder / "manifest.json").write_text(json.dumps(document), encoding="utf-8")
    return folder


_KSERVE = {
    TensorProto.FLOAT: "FP32",
    TensorProto.BOOL: "BOOL",
    TensorProto.INT64: "INT64",
    TensorProto.STRING: "BYTES",
    TensorProto.UINT8: "UINT8",
}


def _signature(model: onnx.ModelProto) -> tuple[list[dict], list[dict]]:
    def spec(value) -> dict:
        tensor = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        return {"name": value.name, "datatype": _KSERVE[tensor.elem_type], "shape": shape}

    return [spec(v) for v in model.graph.input], [spec(v) for v in model.graph.output]


def logged_rows(path: Path) -> list[dict]:
    """Every row of a JSON log file (the ``log_rows`` fixture's), its handlers flushed first."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_protocol_models(repo: Path) -> None:
    """``linear`` (FP32), ``ints`` (INT64) and ``strings`` (BYTES), each v1 with a manifest: the
    models the protocol and fuzz tests speak to over REST and gRPC."""
    write_bundle(repo, "linear", 1, linear_model())
    write_bundle(repo, "ints", 1, int_model())
    write_bundle(repo, "strings", 1, string_model())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tabular_model() -> onnx.ModelProto:
    """numeric FP32 [-1, 2] + categorical BYTES [-1, 1] -> probabilities [-1, 3].

    The logits are (numeric with NaN as -1, the category's id: a 0, b 1, unseen 5), so a test
    can tell from the probabilities exactly which values reached the model.
    """
    minus_one = numpy_helper.from_array(np.array(-1.0, dtype=np.float32), "minus_one")
    return _model(
        [
            helper.make_node("IsNaN", ["numeric"], ["missing"]),
            helper.make_node("Where", ["missing", "minus_one", "numeric"], ["filled"]),
            helper.make_node(
                "LabelEncoder",
                ["categorical"],
                ["code"],
                domain="ai.onnx.ml",
                keys_strings=["a", "b"],
                values_floats=[0.0, 1.0],
                default_float=5.0,
            ),
            helper.make_node("Concat", ["filled", "code"], ["logits"], axis=1),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        [
            helper.make_tensor_value_info("numeric", TensorProto.FLOAT, [None, 2]),
            helper.make_tensor_value_info("categorical", TensorProto.STRING, [None, 1]),
        ],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3])],
        [minus_one],
        ml=True,
    )


def image_model(size: int = 8) -> onnx.ModelProto:
    """image FP32 [-1, 3, size, size] -> probabilities = softmax of the per-channel means."""
    return _model(
        [
            helper.make_node("ReduceMean", ["image"], ["means"], axes=[2, 3], keepdims=0),
            helper.make_node("Softmax", ["means"], ["probabilities"], axis=1),
        ],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 3, size, size])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3])],
    )


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def cpu_config(**changes) -> ServeConfig:
    """A config for tests: free ports, CPU, no polling unless asked."""
    values = {
        "http_port": 0,
        "grpc_port": 0,
        "poll_seconds": None,
        "providers": ["CPUExecutionProvider"],
        **changes,
    }
    return ServeConfig(**values)


def fragile_model() -> onnx.ModelProto:
    """FP32 x [-1, 4] -> y [3, -1]: runs for 3 rows, fails inside onnxruntime otherwise."""
    shape = numpy_helper.from_array(np.array([3, -1], dtype=np.int64), "shape")
    return _model(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, None])],
        [shape],
    )


# A tabular model's class labels and a small RGB image bundle's evaluation spec, shared by the
# REST convenience endpoints' tests and the in-process Predictor's.
PENGUIN_LABELS = ["adelie", "chinstrap", "gentoo"]
IMAGE_SPEC = {
    "kind": "image",
    "version": 1,
    "color_mode": "RGB",
    "resize_size": 10,
    "interpolation": "bilinear",
    "crop_size": [8, 8],
    "input_dtype": "uint8",
    "scale": 1 / 255,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "channel_order": ["R", "G", "B"],
    "layout": "CHW",
    "dtype": "float32",
}


def write_convenience_repo(root: Path) -> Path:
    """A tabular ``penguins`` (3 classes over bill, flipper and island), an RGB image ``digits``
    and a ``linear`` v1: the models the REST convenience endpoints and the Predictor serve."""
    write_bundle(
        root,
        "penguins",
        1,
        tabular_model(),
        task="multiclass",
        kind="tabular",
        feature_schema={"numeric": ["bill", "flipper"], "categorical": ["island"]},
        class_labels=PENGUIN_LABELS,
    )
    write_bundle(
        root,
        "digits",
        1,
        image_model(),
        task="multiclass",
        kind="image",
        class_labels=["r", "g", "b"],
        preprocessing=IMAGE_SPEC,
    )
    write_bundle(root, "linear", 1, linear_model())
    return root


STARTUP = re.compile(r"mlp serve: REST on (http://\S+), gRPC on (\S+)")


def start_server_process(
    repo: Path,
    *extra: str,
    entry: tuple[str, ...] = (sys.executable, "-m", "mlp_serve"),
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[str], str, str]:
    """A real server process on free ports, CPU only, no polling; (process, REST URL, gRPC
    address) once it printed its startup line. ``entry`` is the command that serves (the real
    ``mlp serve`` entry point, say)."""
    command = [*entry, str(repo), "--http-port", "0", "--grpc-port", "0"]
    command += ["--set", "poll_seconds=null", "--set", "providers=[CPUExecutionProvider]", *extra]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    # Reading its output blocks: a server that neither starts nor exits is killed.
    watchdog = threading.Timer(120, process.kill)
    watchdog.start()
    try:
        assert process.stdout is not None
        for line in process.stdout:
            match = STARTUP.search(line)
            if match:
                return process, match.group(1), match.group(2)
    finally:
        watchdog.cancel()
    process.kill()
    process.wait()
    raise AssertionError("the server printed no startup line")


def nvml_sees_a_gpu() -> bool:
    """What NVML says, independently of the code under test."""
    try:
        return bool(read_gpus()[1])
    except GpuUnavailable:
        return False


def cuda_libraries_load() -> bool:
    """Independent of mlp_obs.accelerators: the libraries CUDA's provider links against."""
    try:
        for name in ("libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13", "libcuda.so.1"):
            ctypes.CDLL(name)
    except OSError:
        return False
    return True


def wait_for(condition: Callable[[], object], seconds: float = 20.0) -> None:
    """Return once ``condition()`` holds; fail the test if it has not within ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.01)
