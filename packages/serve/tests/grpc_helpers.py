"""A real DataPlane and gRPC server on 127.0.0.1, run in a background thread's event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from mlp_serve._generated import mlp_inference_pb2 as pb
from mlp_serve.config import ServeConfig
from mlp_serve.dataplane import DataPlane
from mlp_serve.grpc.server import create_grpc_server, stop_grpc_server

INFERENCE = "/inference.GRPCInferenceService/"


class GrpcServerThread:
    """``with GrpcServerThread(repo, config) as server:`` serves until the block ends.

    ``server.address`` is ``127.0.0.1:<port>``; ``server.call(coro)`` runs a coroutine on the
    server's loop (to look at the data plane from its own thread).
    """

    def __init__(self, repository: Path, config: ServeConfig) -> None:
        self.repository = repository
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.dataplane: DataPlane | None = None
        self.server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        self.dataplane = DataPlane(self.repository, self.config)
        await self.dataplane.start()
        self.server = create_grpc_server(self.dataplane, self.config)
        self.port = self.server.mlp_port
        await self.server.start()

    async def _stop(self) -> None:
        if self.server is not None:
            await stop_grpc_server(self.server, grace=1)
        if self.dataplane is not None:
            await self.dataplane.stop(drain_seconds=1)

    def __enter__(self) -> GrpcServerThread:
        self.thread.start()
        try:
            self.call(self._start())
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.call(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


def raw_call(
    channel: grpc.Channel,
    method: str,
    body: bytes,
    metadata: tuple[tuple[str, str], ...] | None = None,
) -> bytes:
    """One unary call with bytes in and out: no (de)serializer on the client side at all."""
    return channel.unary_unary(INFERENCE + method)(body, metadata=metadata, timeout=30)


def linear_infer(channel: grpc.Channel, rows: np.ndarray) -> np.ndarray:
    """serve_helpers' ``linear`` model (FP32 ``x`` [-1, 4] -> ``y`` [-1, 3]) run on ``rows`` by
    one raw ModelInfer call; its output as an array."""
    request = pb.ModelInferRequest(model_name="linear")
    request.inputs.add(name="x", datatype="FP32", shape=list(rows.shape))
    request.raw_input_contents.append(rows.astype("<f4").tobytes())
    response = pb.ModelInferResponse.FromString(
        raw_call(channel, "ModelInfer", request.SerializeToString())
    )
    return np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(-1, 3)
