"""On a GPU machine: serve the exported bundles on onnxruntime's CUDA provider and check them.

For each bundle in REPO: the provider the server actually uses (from its model config), the
outputs through REST and gRPC against in-process onnxruntime on the CPU provider (same inputs),
and p50 latency at concurrency 1 of in-process onnxruntime on CUDA against the server over REST
and gRPC, which gives the server's added p50. Run by tools/gpu_check.sh serve.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import onnxruntime as ort

from mlp_serve._generated import mlp_inference_pb2 as pb
from mlp_serve.bundle import read_manifest
from mlp_serve.grpc.codec import decode_infer_response, encode_infer_request
from mlp_serve.types import InferRequest, Tensor

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
REQUESTS = int(__import__("os").environ.get("GPU_CHECK_REQUESTS", "300"))


def inputs_for(manifest, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {}
    for spec in manifest.inputs:
        shape = [1 if d < 0 else d for d in spec.shape]
        if spec.datatype == "BYTES":
            categories = manifest.feature_schema.categories if manifest.feature_schema else {}
            names = manifest.feature_schema.categorical if manifest.feature_schema else []
            row = [(categories.get(n) or [""])[0] for n in names]
            feeds[spec.name] = np.array([row], dtype=object)
        else:
            feeds[spec.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def p50(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def timed(call, count: int = REQUESTS) -> list[float]:
    for _ in range(20):
        call()
    times = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def main(repo: Path) -> None:
    import onnxruntime  # noqa: F401  (already imported: the GPU build, first on the path)

    ort.preload_dlls() if hasattr(ort, "preload_dlls") else None
    print("onnxruntime", ort.__version__, ort.get_available_providers())
    # The server's log goes to a file: a pipe nobody reads fills up after a few hundred access-log
    # lines and then blocks the server mid-request (a first version of this check did exactly that).
    log_path = repo.parent / "serve-check.log"
    log_file = open(log_path, "w")  # noqa: SIM115 - closed after the server exits
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlp_core.cli",
            "serve",
            str(repo),
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--set",
            "batching.max_queue_delay_ms=0",
        ],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        text=True,
    )
    line = ""
    deadline = time.time() + 180
    while time.time() < deadline and "REST on" not in line:
        time.sleep(0.5)
        line = next((x for x in log_path.read_text().splitlines() if "REST on" in x), "")
        if server.poll() is not None:
            print(log_path.read_text()[-3000:])
            raise SystemExit("the server exited before it was ready")
    http = line.split("REST on ")[1].split(",")[0]
    address = line.split("gRPC on ")[1].strip()
    print(line.strip())
    rest = httpx.Client(base_url=http, timeout=120)
    channel = grpc.insecure_channel(address)
    infer = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=pb.ModelInferResponse.FromString,
    )
    rng = np.random.default_rng(0)
    rows = []
    for bundle in sorted(p for p in repo.iterdir() if p.is_dir()):
        version = max(bundle.iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else -1)
        manifest = read_manifest(version)
        name = bundle.name
        print("checking", name, flush=True)
        config = rest.get(f"/v2/models/{name}/config").json()
        provider = config["parameters"]["execution_provider"]["string_value"]
        feeds = inputs_for(manifest, rng)
        request = InferRequest(
            inputs=[
                Tensor(k, s.datatype, list(v.shape), v)
                for (k, v), s in zip(feeds.items(), manifest.inputs)
            ]
        )
        message = encode_infer_request(name, request)
        served = {t.name: np.asarray(t.data) for t in decode_infer_response(infer(message)).outputs}
        cpu = ort.InferenceSession(str(version / "model.onnx"), providers=[CPU])
        gpu = ort.InferenceSession(str(version / "model.onnx"), providers=[CUDA, CPU])
        expected = dict(zip([o.name for o in cpu.get_outputs()], cpu.run(None, feeds)))
        key = "probabilities" if "probabilities" in expected else next(iter(expected))
        diff = float(np.abs(served[key].astype(np.float64) - expected[key]).max())
        body = {
            "inputs": [
                {
                    "name": k,
                    "datatype": s.datatype,
                    "shape": list(v.shape),
                    "data": [
                        x.decode() if isinstance(x, bytes) else x for x in v.reshape(-1).tolist()
                    ],
                }
                for (k, v), s in zip(feeds.items(), manifest.inputs)
            ]
        }
        inproc = p50(timed(lambda gpu=gpu, feeds=feeds: gpu.run(None, feeds)))
        url = f"/v2/models/{name}/infer"
        try:
            rest_p50 = p50(timed(lambda url=url, body=body: rest.post(url, json=body)))
        except httpx.HTTPError as exc:
            print(f"{name}: REST failed: {exc!r}", flush=True)
            rest_p50 = float("nan")
        grpc_p50 = p50(timed(lambda message=message: infer(message)))
        rows.append(
            (
                name,
                manifest.precision,
                provider,
                gpu.get_providers()[0],
                diff,
                inproc,
                rest_p50,
                grpc_p50,
            )
        )
    server.terminate()
    print(f"server exit code after SIGTERM: {server.wait(60)}")
    log_file.close()
    print()
    print(
        f"{'model':12} {'prec':5} {'served on':22} {'max|diff| vs CPU':>16} "
        f"{'in-proc p50':>11} {'REST p50':>9} {'gRPC p50':>9} {'+REST':>7} {'+gRPC':>7}"
    )
    for name, precision, provider, inproc_provider, diff, inproc, rest_p50, grpc_p50 in rows:
        print(
            f"{name:12} {precision:5} {provider:22} {diff:16.2e} {inproc:9.3f}ms "
            f"{rest_p50:7.3f}ms {grpc_p50:7.3f}ms {rest_p50 - inproc:5.2f}ms "
            f"{grpc_p50 - inproc:5.2f}ms   (in-process on {inproc_provider})"
        )
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
