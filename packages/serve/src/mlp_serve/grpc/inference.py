"""``inference.GRPCInferenceService``: the Open Inference Protocol's methods over a
:class:`~mlp_serve.dataplane.DataPlane`.

Method paths are the published ones (``/inference.GRPCInferenceService/ModelInfer``, ...), so
``tritonclient.grpc`` and ``perf_analyzer`` work unchanged. Request bodies are decoded here
rather than by grpc, so malformed bytes are INVALID_ARGUMENT, not INTERNAL.

Decoding and encoding happen in the call's thread, and so does inference
(:meth:`DataPlane.infer_in_thread`: validation, then the model's runner, no hop to the loop and
back). With dynamic batching the call's thread waits in the model's batcher, or leads it: runs
the batch that holds its request and other callers' (see :mod:`mlp_serve.batching`). Everything
else that touches the data plane goes through the :class:`~mlp_serve.grpc.loop_bridge.LoopBridge`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import descriptor_pool

from mlp_core.errors import ServingError
from mlp_obs.log import get_logger
from mlp_serve._generated import mlp_inference_pb2 as pb
from mlp_serve.auth import INFERENCE, authenticator_for
from mlp_serve.config import ServeConfig
from mlp_serve.dataplane import UNKNOWN_MODEL, DataPlane, status_label
from mlp_serve.deadlines import grpc_timeout
from mlp_serve.errors import InferenceError, InvalidInput, ModelNotFound
from mlp_serve.grpc import codec
from mlp_serve.grpc.loop_bridge import LoopBridge
from mlp_serve.ratelimit import grpc_rate_limit_for

SERVICE_NAME = "inference.GRPCInferenceService"
PROTOCOL = "grpc"
# Probes answer without a token, as Kubernetes and load balancers call them without one; server
# metadata (name, version, extensions) is open as REST's GET /v2 is. The rest needs the
# inference scope: the protocol has no repository (admin) methods over gRPC here.
UNAUTHENTICATED_METHODS = frozenset({"ServerLive", "ServerReady", "ServerMetadata"})

log = get_logger(__name__)

Handler = Callable[[Any, grpc.ServicerContext], Any]


class InferenceServicer:
    """The methods of ``inference.GRPCInferenceService`` over an :class:`DataPlane`."""

    def __init__(self, dataplane: DataPlane, config: ServeConfig, bridge: LoopBridge) -> None:
        self.dataplane = dataplane
        self.authenticator = authenticator_for(config)
        self.bridge = bridge
        self.config = config
        self.rate_limit = grpc_rate_limit_for(dataplane, self.authenticator)

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
        needs_token = self.authenticator.inference_guarded and method not in UNAUTHENTICATED_METHODS

        def handle(body: bytes, context: grpc.ServicerContext) -> Any:
            try:
                if needs_token and self.rate_limit is None:
                    self._authorize(context)
                request = self._parse(method, request_class, body, context)
                if self.rate_limit is not None:
                    # Limited before the token is checked, as REST is: guessing tokens costs
                    # the guesser's address its budget.
                    self.rate_limit.check(method, request, context)
                    if needs_token:
                        self._authorize(context)
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
            return codec.parse_message(request_class, body)
        except InvalidInput as exc:
            if method == "ModelInfer":
                self._count_rejected("", "", exc, context)
            raise

    def _count_rejected(
        self, model: str, version: str, error: InferenceError, context: grpc.ServicerContext
    ) -> None:
        """Count a request refused before the data plane saw it, in the data plane's metrics."""
        self.bridge.call(self._count_rejected_on_loop, model, version, error, context=context)

    def _count_rejected_on_loop(self, model: str, version: str, error: InferenceError) -> None:
        label = model if model and model in self.dataplane.repository.names() else UNKNOWN_MODEL
        with self.dataplane.metrics.track_request(label, version, PROTOCOL) as tracking:
            tracking.status = status_label(error)

    def _authorize(self, context: grpc.ServicerContext) -> None:
        header = ""
        for key, value in context.invocation_metadata() or ():
            if key.lower() == "authorization":
                header = value if isinstance(value, str) else value.decode("latin-1")
                break
        self.authenticator.check(
            header,
            INFERENCE,
            missing="this server needs a bearer token",
            wrong="missing or wrong bearer token",
            hint="Send the metadata `authorization: Bearer <token>`.",
        )

    # --- the methods, one per rpc of the service ----------------------------------------------

    def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> Any:
        return pb.ServerLiveResponse(live=self.bridge.call(self.dataplane.live, context=context))

    def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.bridge.call(self.dataplane.ready, context=context))

    def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> Any:
        ready = self.bridge.call(self._model_ready, request, context=context)
        return pb.ModelReadyResponse(ready=ready)

    def _model_ready(self, request: pb.ModelReadyRequest) -> bool:
        try:
            return self.dataplane.model_ready(request.name, request.version or None)
        except ModelNotFound:
            return False

    def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> Any:
        metadata = self.bridge.call(self.dataplane.server_metadata, context=context)
        return codec.encode_server_metadata(metadata)

    def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> Any:
        metadata = self.bridge.call(
            self.dataplane.model_metadata, request.name, request.version or None, context=context
        )
        return codec.encode_model_metadata(metadata)

    def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> Any:
        config = self.bridge.call(
            self.dataplane.model_config, request.name, request.version or None, context=context
        )
        return codec.encode_model_config(config)

    def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> Any:
        try:
            decoded = codec.decode_infer_request(request)
        except InvalidInput as exc:
            self._count_rejected(request.model_name, request.model_version, exc, context)
            raise
        name, version = request.model_name, request.model_version or None
        response = self.dataplane.infer_in_thread(
            name,
            version,
            decoded,
            PROTOCOL,
            timeout=grpc_timeout(context, self.config),
            on_end=context.add_callback,
        )
        if response is None:  # not ready, unloading, or stopping: the loop answers
            response = self.bridge.run(
                self.dataplane.infer(name, version, decoded, protocol=PROTOCOL), context
            )
        return codec.encode_infer_response(response)


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
