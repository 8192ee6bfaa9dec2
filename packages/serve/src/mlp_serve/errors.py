"""Serving errors, each with the HTTP status and gRPC code the Open Inference Protocol uses."""

from __future__ import annotations

from mlp_core.errors import ServingError


class InferenceError(ServingError):
    """Base of the errors a request can get back; never crashes the server."""

    http_status = 500
    grpc_code = "INTERNAL"
    default_hint = "See the error message; the server keeps serving."


class InvalidInput(InferenceError):
    """The request is malformed or does not match the model: names, datatypes, shapes, sizes."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class ModelNotFound(InferenceError):
    http_status = 404
    grpc_code = "NOT_FOUND"


class ModelUnavailable(InferenceError):
    """The model exists but is not ready (loading, failed, unloaded)."""

    http_status = 503
    grpc_code = "UNAVAILABLE"


class QueueFull(InferenceError):
    """The model's queue is at its limit: try again shortly."""

    http_status = 503
    grpc_code = "UNAVAILABLE"
    retry_after_seconds = 1


class PayloadTooLarge(InferenceError):
    http_status = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class Unauthorized(InferenceError):
    http_status = 401
    grpc_code = "UNAUTHENTICATED"


class QueueBytesFull(QueueFull):
    """The model's queue holds its limit of input bytes: try again shortly."""

    grpc_code = "RESOURCE_EXHAUSTED"


class RateLimited(InferenceError):
    """The client spent its rate limit's budget; ``retry_after_seconds`` says when one more
    request will be allowed (REST ``Retry-After``, gRPC trailing metadata ``retry-after``)."""

    http_status = 429
    grpc_code = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, retry_after_seconds: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retry_after_seconds = retry_after_seconds


class DeadlineExceeded(InferenceError):
    """The request's time ran out (serve.request_timeout_seconds or the gRPC deadline) before
    it was answered; if it had not run yet, it was taken out of the queue."""

    http_status = 504
    grpc_code = "DEADLINE_EXCEEDED"


class Cancelled(InferenceError):
    """The client went away (a cancelled gRPC call) before its request ran."""

    http_status = 499  # nginx's "client closed request": nobody reads it
    grpc_code = "CANCELLED"


class BundleError(ServingError):
    """A bundle on disk is unusable: missing files, a bad manifest, a sha256 mismatch."""
