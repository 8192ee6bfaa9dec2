"""The gRPC server: grpc's synchronous server with the inference service, health and
reflection, bound and ready for the serve loop to start and stop.

The messages are ours (``mlp.serve.v2``, wire-identical to Triton's ``inference.*``): a process
may import tritonclient beside mlp-serve, and protobuf refuses two registrations of one name. For
the same reason the service's descriptor lives in a private descriptor pool, used for the method
table and for server reflection, never in the process-wide one.

The server is grpc's synchronous one: calls are answered in a small pool of threads. grpc.aio's
own per-call overhead is about twice the sync server's on one core, which makes it the bottleneck
of a small model's serving.
"""

from __future__ import annotations

import asyncio
import concurrent.futures

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from mlp_core.errors import ServingError
from mlp_obs.log import get_logger
from mlp_serve._generated import mlp_inference_pb2 as pb
from mlp_serve._generated import mlp_inference_service_descriptor as service_file
from mlp_serve._generated import mlp_model_config_pb2 as pb_config
from mlp_serve.config import ServeConfig
from mlp_serve.dataplane import DataPlane
from mlp_serve.grpc.health import HEALTH_SERVICE_NAME, HealthServicer
from mlp_serve.grpc.inference import SERVICE_NAME, InferenceServicer
from mlp_serve.grpc.loop_bridge import LoopBridge
from mlp_serve.tls import grpc_server_credentials

# Threads answering calls. A call waits for its batch in its thread; requests beyond them wait in
# grpc's queue, not in the batcher, so this bounds how many gRPC requests one batch can merge.
GRPC_WORKERS = 32

log = get_logger(__name__)


def service_pool() -> descriptor_pool.DescriptorPool:
    """A private pool holding our messages, ``inference.GRPCInferenceService``, health and
    reflection: everything reflection describes, nothing registered process-wide."""
    pool = descriptor_pool.DescriptorPool()
    for module in (pb_config, pb, health_pb2, reflection_pb2):
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    proto = descriptor_pb2.FileDescriptorProto.FromString(service_file.SERIALIZED)
    pool.Add(proto)
    return pool


def create_grpc_server(
    dataplane: DataPlane,
    config: ServeConfig,
    *,
    reflection_enabled: bool = True,
    reuse_port: bool = False,
) -> GrpcServer:
    """A gRPC server bound to ``config.host:config.grpc_port``, not yet started.

    The port actually bound (``grpc_port`` 0 picks a free one) is ``server.mlp_port``; the
    health servicer is ``server.mlp_health`` (see :func:`stop_grpc_server`). Call from the
    event loop that will run the data plane: the calls' threads hand their work to it.
    ``reuse_port``: one of several workers sharing the port (``mlp serve --workers N``).
    """
    bridge = LoopBridge(asyncio.get_running_loop())
    limit = config.grpc_max_message_bytes
    executor = concurrent.futures.ThreadPoolExecutor(GRPC_WORKERS, thread_name_prefix="mlp-grpc")
    server = grpc.server(
        executor,
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            # grpc enables SO_REUSEPORT by default: a second server on a busy port would bind
            # "successfully" and share its traffic. A busy port must be an error instead,
            # except among the workers of one `mlp serve --workers N`, which share it on purpose.
            ("grpc.so_reuseport", int(reuse_port)),
            # Request metadata (headers) above it: refused with RESOURCE_EXHAUSTED.
            ("grpc.max_metadata_size", config.grpc_max_metadata_bytes),
            ("grpc.absolute_max_metadata_size", config.grpc_max_metadata_bytes),
        ],
    )
    pool = service_pool()
    servicer = InferenceServicer(dataplane, config, bridge)
    server.add_generic_rpc_handlers((servicer.generic_handler(pool),))
    health = HealthServicer(dataplane, bridge)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if reflection_enabled:
        names = (SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server, pool=pool)

    host = f"[{config.host}]" if ":" in config.host else config.host
    address = f"{host}:{config.grpc_port}"
    try:
        credentials = grpc_server_credentials(config.tls)
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        port, reason = 0, str(exc)
    else:
        reason = "address in use or not available"
    if not port:
        server.stop(None)
        executor.shutdown(wait=False)
        raise ServingError(
            f"cannot listen for gRPC on {address}: {reason}",
            hint="Pick another grpc_port (0 picks a free one) or stop what uses it.",
        )
    log.info("grpc server bound", address=f"{host}:{port}", max_message_bytes=limit)
    return GrpcServer(server, executor, port, health)


async def stop_grpc_server(server: GrpcServer, grace: float | None = 5.0) -> None:
    """Health NOT_SERVING first (so balancers stop sending), then finish in-flight calls."""
    server.mlp_health.shutting_down = True
    await server.stop(grace)


class GrpcServer:
    """grpc's sync server with awaitable ``start`` and ``stop``, for the serve loop.

    ``stop(grace)`` refuses new calls at once, lets the ones in flight run up to ``grace``
    seconds (their data plane work still runs on the loop, which stays free while this waits), then
    cancels what is left.
    """

    def __init__(
        self,
        server: grpc.Server,
        executor: concurrent.futures.ThreadPoolExecutor,
        port: int,
        health: HealthServicer,
    ) -> None:
        self.server = server
        self.mlp_port = port
        self.mlp_health = health
        self._executor = executor

    async def start(self) -> None:
        self.server.start()

    async def stop(self, grace: float | None) -> None:
        stopped = self.server.stop(grace)
        await asyncio.get_running_loop().run_in_executor(None, stopped.wait)
        self._executor.shutdown(wait=False)
