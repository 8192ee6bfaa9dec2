"""Where a gRPC ModelInfer call's CPU goes: mlp-serve's gRPC server against grpc's do-nothing
floor, both served from this process on loopback and loaded by h2load from another process.

Prints this process's CPU microseconds per call (``time.process_time``: every thread, so grpc's
poller and call threads, the data plane's loop and onnxruntime all count; h2load's own CPU does
not) for:

- ``floor``: grpc's synchronous server (32 threads, as ours) whose ModelInfer returns empty
  bytes without reading the request: bench_workers.py's floor, the issue's "do-nothing" server;
- ``floor + proto``: the same, parsing the ModelInferRequest and returning an empty
  ModelInferResponse through protobuf (what any servicer of the proto pays);
- ``bare onnxruntime``: competent_grpc_server.py's servicer (the raw input as an array,
  onnxruntime with one thread, the raw output back; no checks, no metrics) on the same server;
- ``mlp``: our gRPC server, as ``mlp serve`` runs it (DataPlane + ``create_grpc_server``, the
  default config apart from polling, startup objects frozen); ``mlp no batching``: the same
  with ``batching.enabled=false``;
- ``mlp handler only``: our ModelInfer handler called directly in this thread, one call at a
  time, without grpc: parsing, decoding, validation, the batcher, onnxruntime, encoding, the
  metrics and the response's serialization.

Then, with ``--profile``, cProfile's top functions of a fresh server of ours under the same load,
over all its threads. CPU time, not wall time: the machine is shared and noisy. Servers are
measured in interleaved rounds; the best round of each is its cost with the least interference.

    .venv/bin/python tools/bench/profile_grpc.py                     # mlp_small, 16 connections
    .venv/bin/python tools/bench/profile_grpc.py --connections 1 --streams 16 --profile
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import os
import pstats
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import h2load_client  # beside this script
import numpy as np
from bench_serve import MODELS, grpc_body, write_repository  # beside this script

from mlp_obs.log import configure_logging
from mlp_serve._generated import mlp_inference_pb2 as pb
from mlp_serve.config import BatchingConfig, ServeConfig
from mlp_serve.dataplane import DataPlane
from mlp_serve.grpc.inference import SERVICE_NAME
from mlp_serve.grpc.server import GrpcServer, create_grpc_server, service_pool, stop_grpc_server

MODEL_INFER = f"/{SERVICE_NAME}/ModelInfer"
NO_BATCHING = BatchingConfig(enabled=False)


# -- servers -----------------------------------------------------------------------------------


class OurServer:
    """The data plane and our gRPC server on their own event loop thread, as in ``mlp serve``
    (where the loop also runs the REST front end, idle here)."""

    def __init__(self, repository: Path, config: ServeConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="mlp-loop", daemon=True)
        self.thread.start()
        self.dataplane = DataPlane(repository, config)
        self.config = config
        self.server: GrpcServer = self._call(self._start())
        gc.collect()
        gc.freeze()  # as mlp serve does after startup (mlp_serve.server.freeze_startup_objects)

    @property
    def port(self) -> int:
        return self.server.mlp_port

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(120)

    async def _start(self) -> GrpcServer:
        await self.dataplane.start()
        server = create_grpc_server(self.dataplane, self.config, reflection_enabled=True)
        await server.start()
        return server

    def handler(self) -> Callable[[bytes], bytes]:
        """Our ModelInfer as grpc calls it, with its response serialized, without grpc."""
        from mlp_serve.grpc.inference import InferenceServicer
        from mlp_serve.grpc.loop_bridge import LoopBridge

        servicer = InferenceServicer(self.dataplane, self.config, LoopBridge(self.loop))
        generic = servicer.generic_handler(service_pool())
        method = generic.service(cast(grpc.HandlerCallDetails, _CallDetails(MODEL_INFER)))
        assert method is not None and method.response_serializer is not None
        behaviour, serialize = method.unary_unary, method.response_serializer
        assert behaviour is not None
        context = cast(grpc.ServicerContext, _Context())
        return lambda body: serialize(behaviour(body, context))

    def close(self) -> None:
        async def stop() -> None:
            await stop_grpc_server(self.server, grace=1)
            await self.dataplane.stop(drain_seconds=1)

        self._call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@dataclass
class _CallDetails:
    method: str
    invocation_metadata: tuple = ()


class _Context:
    """What our handler asks of grpc's ServicerContext, for calls made without grpc."""

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return True

    def time_remaining(self) -> float | None:
        return None

    def invocation_metadata(self) -> tuple:
        return ()

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise RuntimeError(f"{code}: {details}")


class FloorServer:
    """grpc's synchronous server, 32 threads as ours, with one ModelInfer ``method``."""

    def __init__(self, method: grpc.RpcMethodHandler) -> None:
        handler = grpc.method_handlers_generic_handler(SERVICE_NAME, {"ModelInfer": method})
        self.executor = futures.ThreadPoolExecutor(32)
        self.server = grpc.server(self.executor, handlers=[handler])
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def close(self) -> None:
        self.server.stop(None).wait()
        self.executor.shutdown(wait=False)


def do_nothing() -> grpc.RpcMethodHandler:
    """Empty bytes back, the request unread: grpc's own per-call work."""
    return grpc.unary_unary_rpc_method_handler(lambda request, context: b"")


def empty_response() -> grpc.RpcMethodHandler:
    """The request parsed, an empty ModelInferResponse back: what any servicer of the proto pays."""
    return grpc.unary_unary_rpc_method_handler(
        lambda request, context: pb.ModelInferResponse(),
        request_deserializer=pb.ModelInferRequest.FromString,
        response_serializer=pb.ModelInferResponse.SerializeToString,
    )


def bare_onnxruntime(repo: Path) -> grpc.RpcMethodHandler:
    """competent_grpc_server.py's servicer (a capable user's, beside this script) as a method."""
    from competent_grpc_server import Servicer
    from tritonclient.grpc import service_pb2 as triton_pb

    servicer = Servicer(repo, "CPUExecutionProvider", threads=1)
    return grpc.unary_unary_rpc_method_handler(
        servicer.ModelInfer,
        request_deserializer=triton_pb.ModelInferRequest.FromString,
        response_serializer=triton_pb.ModelInferResponse.SerializeToString,
    )


# -- load --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    body: Path  # the framed request
    connections: int
    streams: int
    cpu: int | None  # h2load's core, away from the servers'

    def run(self, port: int, requests: int, answer_bytes: int) -> None:
        """``requests`` calls from h2load; every one must be answered with ``answer_bytes``."""
        pinned = ["taskset", "-c", str(self.cpu)] if self.cpu is not None else []
        command = [
            *pinned,
            "h2load",
            *("-c", str(self.connections), "-m", str(self.streams), "-n", str(requests)),
            *("-d", str(self.body)),
            *(arg for header in h2load_client.GRPC_HEADERS for arg in ("-H", header)),
            f"http://127.0.0.1:{port}{MODEL_INFER}",
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        found = re.search(
            r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", done.stdout
        )
        data = re.search(r"traffic: .*\((\d+)\) data", done.stdout)
        if done.returncode or found is None or data is None:
            raise RuntimeError(f"h2load failed:\n{done.stdout[-1500:]}{done.stderr}")
        # gRPC errors are HTTP 200 with a trailer h2load does not read, and no body.
        answered = int(data[1]) // (5 + answer_bytes)
        if int(found[2]) != requests or answered != requests:
            raise RuntimeError(f"{requests} calls, {answered} answered right:\n{done.stdout}")


def cpu_per_call(call: Callable[[], None], count: int) -> float:
    """CPU microseconds of this process (every thread) per call."""
    started = time.process_time_ns()
    call()
    return (time.process_time_ns() - started) / count / 1000


def profile_server(repo: Path, config: ServeConfig, load: Load, args: argparse.Namespace) -> None:
    """cProfile over every thread of a fresh server of ours: the loop's, grpc's, the calls'."""
    profiles: list[cProfile.Profile] = []

    def start_profiling(*_: Any) -> None:
        # A thread's first profile event: cProfile takes over as the thread's profiler.
        # The thread's CPU time, not wall time: a call thread mostly waits (for the GIL, its
        # batch, grpc), and waiting costs no CPU.
        profile = cProfile.Profile(time.thread_time)
        profiles.append(profile)
        profile.enable()

    # Set while the server runs: grpc's pool starts its threads as calls arrive.
    threading.setprofile(start_profiling)
    server = OurServer(repo, config)
    try:
        answer = len(server.handler()(load.body.read_bytes()[5:]))
        load.run(server.port, 500, answer)
        for profile in profiles:  # startup and warm-up out of the figures
            profile.clear()
        load.run(server.port, args.requests, answer)
        for profile in profiles:
            profile.create_stats()  # threads that ran nothing since have no stats
        stats = pstats.Stats(*(p for p in profiles if p.stats))  # type: ignore[attr-defined]
    finally:
        threading.setprofile(None)  # type: ignore[arg-type]
        server.close()
    stats.sort_stats("tottime").print_stats(args.top)
    stats.sort_stats("cumulative").print_stats(args.top)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", default="mlp_small", choices=[s.name for s in MODELS])
    parser.add_argument("--requests", type=int, default=6000, help="per server and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16, help="h2load's -c")
    parser.add_argument("--streams", type=int, default=1, help="calls in flight per connection")
    parser.add_argument("--no-pin", action="store_true", help="leave the CPU affinity alone")
    parser.add_argument("--profile", action="store_true", help="cProfile ours afterwards")
    parser.add_argument("--top", type=int, default=30, help="functions --profile prints")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args()
    configure_logging(args.log_level)
    if h2load_client.find() is None:
        sys.exit("h2load is not installed (Debian: apt-get install nghttp2-client)")
    cpus = sorted(os.sched_getaffinity(0))
    client_cpu = None
    if not args.no_pin and len(cpus) >= 2:
        # Before any thread starts (threads inherit it): the servers on one core, h2load on
        # another, as the issue measured; onnxruntime then sizes its pool for one core.
        os.sched_setaffinity(0, cpus[:1])
        client_cpu = cpus[1]

    spec = next(s for s in MODELS if s.name == args.model)
    row = np.random.default_rng(1).normal(size=(1, spec.features)).astype(np.float32)
    message = grpc_body(spec, row)
    with tempfile.TemporaryDirectory(prefix="profile-grpc-") as folder:
        root = Path(folder)
        repo = root / "repo"
        write_repository(repo)
        body = root / "body"
        body.write_bytes(b"\x00" + len(message).to_bytes(4, "big") + message)
        load = Load(body, args.connections, args.streams, client_cpu)
        config = ServeConfig(host="127.0.0.1", grpc_port=0, poll_seconds=None)

        ours = OurServer(repo, config)
        unbatched = OurServer(repo, config.model_copy(update={"batching": NO_BATCHING}))
        handler = ours.handler()
        answer = pb.ModelInferResponse.FromString(handler(message))
        outputs = np.frombuffer(answer.raw_output_contents[0], "<f4")
        assert outputs.shape == (spec.layers[-1],) and np.isfinite(outputs).all(), answer
        answer_bytes = answer.ByteSize()
        floors = {
            "floor": FloorServer(do_nothing()),
            "floor + proto": FloorServer(empty_response()),
            "bare onnxruntime": FloorServer(bare_onnxruntime(repo)),
        }

        def over_grpc(port: int, answered: int) -> Callable[[], float]:
            load.run(port, max(500, args.connections * args.streams), answered)  # warm-up
            return lambda: cpu_per_call(
                lambda: load.run(port, args.requests, answered), args.requests
            )

        def direct() -> float:
            def calls() -> None:
                for _ in range(args.requests):
                    handler(message)

            return cpu_per_call(calls, args.requests)

        cells = {
            "floor": over_grpc(floors["floor"].port, 0),
            "floor + proto": over_grpc(floors["floor + proto"].port, 0),
            "bare onnxruntime": over_grpc(floors["bare onnxruntime"].port, answer_bytes),
            "mlp": over_grpc(ours.port, answer_bytes),
            "mlp no batching": over_grpc(unbatched.port, answer_bytes),
            "mlp handler only": direct,
        }
        times: dict[str, list[float]] = {label: [] for label in cells}
        for _ in range(args.rounds):
            for label, cell in cells.items():
                times[label].append(cell())
        best = {label: min(values) for label, values in times.items()}
        shape = f"{args.connections} connections x {args.streams} streams"
        print(f"{spec.name}, {shape}, {args.requests} calls a round, best of {args.rounds}:")
        for label in cells:
            print(
                f"{label:<18} {best[label]:7.1f} us of CPU per call  "
                f"({best[label] / best['floor']:.2f}x floor)  rounds: "
                + " ".join(f"{t:.0f}" for t in times[label])
            )
        ours.close()
        unbatched.close()
        for floor in floors.values():
            floor.close()
        if args.profile:
            profile_server(repo, config, load, args)


if __name__ == "__main__":
    main()
