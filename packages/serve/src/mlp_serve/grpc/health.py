"""The standard ``grpc.health.v1.Health`` service, answered from the data plane's state.

Service names: ``""`` and ``inference.GRPCInferenceService`` are the server (SERVING when the
data plane is ready); any other name is a model, SERVING when its default version is ready. While
the server stops, every answer is NOT_SERVING, so balancers stop sending before calls are refused.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mlp_serve.dataplane import DataPlane
from mlp_serve.errors import ModelNotFound, ModelUnavailable
from mlp_serve.grpc.inference import SERVICE_NAME
from mlp_serve.grpc.loop_bridge import LoopBridge

HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
WATCH_POLL_SECONDS = 1.0


class HealthServicer(health_pb2_grpc.HealthServicer):
    """``grpc.health.v1.Health``, answered from the data plane's state at the time of asking."""

    def __init__(self, dataplane: DataPlane, bridge: LoopBridge) -> None:
        self.dataplane = dataplane
        self.bridge = bridge
        self.shutting_down = False

    def status(self, service: str) -> int | None:
        """The ServingStatus of ``service``, or None for a name that is neither (on the loop)."""
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        if self.shutting_down:
            return not_serving
        if service in ("", SERVICE_NAME):
            return serving if self.dataplane.ready() else not_serving
        try:
            self.dataplane.model_metadata(service)
            ready = self.dataplane.model_ready(service)
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
