"""The gRPC front end: the Open Inference Protocol's ``inference.GRPCInferenceService``.

Method paths are the published ones (``/inference.GRPCInferenceService/ModelInfer``, ...), so
``tritonclient.grpc`` and ``perf_analyzer`` work unchanged. The messages are ours
(``mlp.serve.v2``, wire-identical to Triton's ``inference.*``): a process may import
tritonclient beside mlp-serve, and protobuf refuses two registrations of one name. For the same
reason the service's descriptor lives in a private descriptor pool, used for the method table
and for server reflection, never in the process-wide one.

Beside it: the standard ``grpc.health.v1.Health`` service (SERVING while the core is ready; a
model's name as the service asks about that model) and server reflection. Request bodies are
decoded here rather than by grpc, so malformed bytes are INVALID_ARGUMENT, not INTERNAL.

The server is grpc's synchronous one: calls are answered in a small pool of threads. grpc.aio's
own per-call overhead is about twice the sync server's on one core, which makes it the bottleneck
of a small model's serving. Decoding and encoding messages happen in the call's thread, and so
does inference (:meth:`InferenceCore.infer_in_thread`: validation, then the model's runner,
no hop to the loop and back). With dynamic batching the call's thread waits in the model's
batcher, or leads it: runs the batch that holds its request and other callers' (see
:mod:`mlp_serve.batching`). Everything else that touches the core (errors about models that are
not ready, metadata, health) is handed to the asyncio loop the core lives on
(``asyncio.run_coroutine_threadsafe``) and waited for.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from mlp_core.errors import ServingError
from mlp_obs.log import get_logger
from mlp_serve import grpc_codec
from mlp_serve._generated import mlp_inference_pb2 as pb
from mlp_serve._generated import mlp_inference_service_descriptor as service_file
from mlp_serve._generated import mlp_model_config_pb2 as pb_config
from mlp_serve.config import ServeConfig
from mlp_serve.core import UNKNOWN_MODEL, InferenceCore, status_label
from mlp_serve.errors import (
    InferenceError,
    InvalidInput,
    ModelNotFound,
    ModelUnavailable,
    Unauthorized,
)

SERVICE_NAME = "inference.GRPCInferenceService"
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
PROTOCOL = "grpc"
# Probes answer without a token, as Kubernetes and load balancers call them without one.
UNAUTHENTICATED_METHODS = frozenset({"ServerLive", "ServerReady"})
WATCH_POLL_SECONDS = 1.0
# Threads answering calls. A call waits for its batch in its thread; requests beyond them wait in
# grpc's queue, not in the batcher, so this bounds how many gRPC requests one batch can merge.
GRPC_WORKERS = 32

log = get_logger(__name__)

Handler = Callable[[Any, grpc.ServicerContext], Any]


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
    core: InferenceCore, config: ServeConfig, *, reflection_enabled: bool = True
) -> GrpcServer:
    """A gRPC server bound to ``config.host:config.grpc_port``, not yet started.

    The port actually bound (``grpc_port`` 0 picks a free one) is ``server.mlp_port``; the
    health servicer is ``server.mlp_health`` (see :func:`stop_grpc_server`). Call from the
    event loop that will run the core: the calls' threads hand their work to it.
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
            # "successfully" and share its traffic. A busy port must be an error instead.
            ("grpc.so_reuseport", 0),
        ],
    )
    pool = service_pool()
    servicer = InferenceServicer(core, config, bridge)
    server.add_generic_rpc_handlers((servicer.generic_handler(pool),))
    health = HealthServicer(core, bridge)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if reflection_enabled:
        names = (SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server, pool=pool)

    host = f"[{config.host}]" if ":" in config.host else config.host
    address = f"{host}:{config.grpc_port}"
    try:
        port = server.add_insecure_port(address)
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
    health = getattr(server, "mlp_health", None)
    if health is not None:
        health.shutting_down = True
    await server.stop(grace)


class GrpcServer:
    """grpc's sync server with awaitable ``start`` and ``stop``, for the serve loop.

    ``stop(grace)`` refuses new calls at once, lets the ones in flight run up to ``grace``
    seconds (their core work still runs on the loop, which stays free while this waits), then
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


class LoopBridge:
    """Runs work on the core's event loop from a call's thread and waits for its result."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def run(
        self, coro: Coroutine[Any, Any, Any], context: grpc.ServicerContext | None = None
    ) -> Any:
        """``coro``'s result, within the call's deadline. With ``context``, the coroutine is
        cancelled if the call ends first (the client left, the deadline passed)."""
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError:  # the loop is closed: the server is going away
            coro.close()
            raise ModelUnavailable("the server is shutting down") from None
        timeout = threading.TIMEOUT_MAX
        if context is not None:
            context.add_callback(future.cancel)
            timeout = min(context.time_remaining(), timeout)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def call(
        self, fn: Callable[..., Any], *args: Any, context: grpc.ServicerContext | None = None
    ) -> Any:
        """``fn(*args)``, run on the loop (the core's state is only ever touched there)."""
        return self.run(_call(fn, args), context)


async def _call(fn: Callable[..., Any], args: tuple) -> Any:
    return fn(*args)


class InferenceServicer:
    """The methods of ``inference.GRPCInferenceService`` over an :class:`InferenceCore`."""

    def __init__(self, core: InferenceCore, config: ServeConfig, bridge: LoopBridge) -> None:
        self.core = core
        self.auth_token = config.auth_token
        self.bridge = bridge

    def generic_handler(self, pool: descriptor_pool.DescriptorPool) -> grpc.GenericRpcHandler:
        """Handlers for every method the service descriptor declares, under its full name."""
        service = pool.FindServiceByName(SERVICE_NAME)
        handlers = {}
        for method in service.methods:
            implementation = getattr(self, method.name)
            request_class = getattr(pb, method.input_type.name)
            response_class = getattr(pb, method.output_type.name)
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                self._wrap(method.name, request_class, implementation),
                # Bodies arrive as bytes: we decode them, so bad ones get INVALID_ARGUMENT.
                request_deserializer=None,
                response_serializer=response_class.SerializeToString,
            )
        return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)

    def _wrap(
        self, method: str, request_class: type, implementation: Handler
    ) -> Callable[[bytes, grpc.ServicerContext], Any]:
        needs_token = self.auth_token is not None and method not in UNAUTHENTICATED_METHODS

        def handle(body: bytes, context: grpc.ServicerContext) -> Any:
            try:
                if needs_token:
                    self._authorize(context)
                request = self._parse(method, request_class, body, context)
                return implementation(request, context)
            except InferenceError as exc:
                code, details = _status_code(exc.grpc_code), _details(exc)
                if code is grpc.StatusCode.INTERNAL:
                    log.error("grpc request failed", method=method, error=exc.message)
            except ServingError as exc:
                log.error("grpc request failed", method=method, error=exc.message)
                code, details = grpc.StatusCode.INTERNAL, exc.message
            except (concurrent.futures.CancelledError, asyncio.CancelledError):
                code, details = grpc.StatusCode.CANCELLED, "the call was cancelled"
            except concurrent.futures.TimeoutError:
                code, details = grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed"
            except Exception as exc:
                # A bug, not a bad request: keep the traceback in the log, keep serving.
                log.exception("grpc request raised", method=method)
                code = grpc.StatusCode.INTERNAL
                details = f"internal error: {type(exc).__name__}: {exc}"
            # Outside the handlers above: abort raises, and must not be caught as a bug.
            context.abort(code, details)

        handle.__name__ = method
        return handle

    def _parse(
        self, method: str, request_class: type, body: bytes, context: grpc.ServicerContext
    ) -> Any:
        try:
            return grpc_codec.parse_message(request_class, body)
        except InvalidInput as exc:
            if method == "ModelInfer":
                self._count_rejected("", "", exc, context)
            raise

    def _count_rejected(
        self, model: str, version: str, error: InferenceError, context: grpc.ServicerContext
    ) -> None:
        """Count a request refused before the core saw it, in the core's metrics."""
        self.bridge.call(self._count_rejected_on_loop, model, version, error, context=context)

    def _count_rejected_on_loop(self, model: str, version: str, error: InferenceError) -> None:
        label = model if model and model in self.core.repository.names() else UNKNOWN_MODEL
        with self.core.metrics.track_request(label, version, PROTOCOL) as tracking:
            tracking.status = status_label(error)

    def _authorize(self, context: grpc.ServicerContext) -> None:
        header = ""
        for key, value in context.invocation_metadata() or ():
            if key.lower() == "authorization":
                header = value if isinstance(value, str) else value.decode("latin-1")
                break
        scheme, _, token = header.partition(" ")
        expected = self.auth_token or ""
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), expected.encode()
        ):
            raise Unauthorized(
                "missing or wrong bearer token" if header else "this server needs a bearer token",
                hint="Send the metadata `authorization: Bearer <token>`.",
            )

    # --- the methods, one per rpc of the service ----------------------------------------------

    def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> Any:
        return pb.ServerLiveResponse(live=self.bridge.call(self.core.live, context=context))

    def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.bridge.call(self.core.ready, context=context))

    def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> Any:
        ready = self.bridge.call(self._model_ready, request, context=context)
        return pb.ModelReadyResponse(ready=ready)

    def _model_ready(self, request: pb.ModelReadyRequest) -> bool:
        try:
            return self.core.model_ready(request.name, request.version or None)
        except ModelNotFound:
            return False

    def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> Any:
        metadata = self.bridge.call(self.core.server_metadata, context=context)
        return grpc_codec.encode_server_metadata(metadata)

    def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> Any:
        metadata = self.bridge.call(
            self.core.model_metadata, request.name, request.version or None, context=context
        )
        return grpc_codec.encode_model_metadata(metadata)

    def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> Any:
        config = self.bridge.call(
            self.core.model_config, request.name, request.version or None, context=context
        )
        return grpc_codec.encode_model_config(config)

    def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> Any:
        try:
            decoded = grpc_codec.decode_infer_request(request)
        except InvalidInput as exc:
            self._count_rejected(request.model_name, request.model_version, exc, context)
            raise
        name, version = request.model_name, request.model_version or None
        response = self.core.infer_in_thread(name, version, decoded, PROTOCOL)
        if response is None:  # not ready, unloading, or stopping: the loop answers
            response = self.bridge.run(
                self.core.infer(name, version, decoded, protocol=PROTOCOL), context
            )
        return grpc_codec.encode_infer_response(response)


def _details(error: InferenceError) -> str:
    """The status message: the error, and its hint where it says more than the generic one."""
    if error.hint and error.hint != type(error).default_hint:
        return f"{error.message} (hint: {error.hint})"
    return error.message


def _status_code(name: str) -> grpc.StatusCode:
    try:
        return grpc.StatusCode[name]
    except KeyError:
        return grpc.StatusCode.INTERNAL


class HealthServicer(health_pb2_grpc.HealthServicer):
    """``grpc.health.v1.Health``, answered from the core's state at the time of asking.

    Service names: ``""`` and ``inference.GRPCInferenceService`` are the server (SERVING when
    the core is ready); any other name is a model, SERVING when its default version is ready.
    """

    def __init__(self, core: InferenceCore, bridge: LoopBridge) -> None:
        self.core = core
        self.bridge = bridge
        self.shutting_down = False

    def status(self, service: str) -> int | None:
        """The ServingStatus of ``service``, or None for a name that is neither (on the loop)."""
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        if self.shutting_down:
            return not_serving
        if service in ("", SERVICE_NAME):
            return serving if self.core.ready() else not_serving
        try:
            self.core.model_metadata(service)
            ready = self.core.model_ready(service)
        except ModelNotFound:
            return None
        return serving if ready else not_serving

    def _status(self, service: str, context: grpc.ServicerContext | None) -> int | None:
        if self.shutting_down:  # the loop may be busy stopping: answer without it
            return health_pb2.HealthCheckResponse.NOT_SERVING
        try:
            return self.bridge.call(self.status, service, context=context)
        except ModelUnavailable:  # the loop is gone
            return health_pb2.HealthCheckResponse.NOT_SERVING

    def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        status = self._status(request.service, context)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
    ) -> Iterator[health_pb2.HealthCheckResponse]:
        # The standard asks for the current status at once, then one message per change.
        ended = threading.Event()
        context.add_callback(ended.set)  # the client left or the server stops: free the thread
        last = None
        while context.is_active():
            try:
                # No context: one cancel callback per poll would pile up on a long stream.
                status = self._status(request.service, None)
            except (concurrent.futures.CancelledError, concurrent.futures.TimeoutError):
                return
            if status is None:
                status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            if ended.wait(WATCH_POLL_SECONDS):
                return
