"""The REST front end: the Open Inference Protocol (KServe v2 / Triton) over FastAPI.

Health, server and model metadata, model config, inference with JSON and binary tensors, and
Triton's repository API; ``/metrics`` for Prometheus; ``/docs`` for people. The people-facing
``/v1`` endpoints (JSON rows, image uploads) live in :mod:`mlp_serve.rest.convenience`. Every
error is answered as Triton answers it, ``{"error": "..."}`` with its status, and never takes
the server down.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response

from mlp_core.errors import MlpError
from mlp_obs.log import get_logger
from mlp_obs.metrics import CollectorRegistry, render
from mlp_serve import __version__
from mlp_serve.auth import ADMIN, ANY, INFERENCE, authenticator_for
from mlp_serve.config import ServeConfig
from mlp_serve.dataplane import DataPlane
from mlp_serve.errors import InferenceError, ModelNotFound, QueueFull, RateLimited
from mlp_serve.ratelimit import add_rest_rate_limit
from mlp_serve.rest.codec import HEADER_LENGTH, decode_request, encode_response, parse_json
from mlp_serve.rest.convenience import convenience_router
from mlp_serve.rest.fast_infer import FastInferRoute, ServeApp
from mlp_serve.rest.middleware import BodyLimit, RequestContext
from mlp_serve.types import ModelMetadata

log = get_logger(__name__)

PROTOCOL = "rest"
EXPOSED_HEADERS = ["Inference-Header-Content-Length", "X-Request-ID", "Retry-After"]


def create_app(
    dataplane: DataPlane, config: ServeConfig, registry: CollectorRegistry | None = None
) -> FastAPI:
    """The ASGI app serving ``dataplane``; ``registry`` is what /metrics shows (default: the
    data plane's)."""
    app = ServeApp(
        title="mlp serve",
        version=__version__,
        description="ONNX models on onnxruntime, over the Open Inference Protocol "
        "(KServe v2 / Triton): tritonclient and perf_analyzer work unchanged.",
    )
    app.state.dataplane = dataplane
    app.state.config = config
    _add_error_handlers(app)
    app.include_router(_health_router(dataplane))
    app.include_router(_model_router(dataplane, config))
    app.include_router(_repository_router(dataplane, config))
    app.include_router(convenience_router(dataplane, inference_auth(config)))
    # Inference first, in plain ASGI (FastAPI's infer route stays for the OpenAPI doc).
    check = bearer_checker(config, INFERENCE, "this endpoint")
    app.fast_route = FastInferRoute(dataplane, check, error_response, PROTOCOL)

    metrics_registry = registry if registry is not None else dataplane.registry

    @app.get("/metrics", tags=["observability"], summary="Prometheus metrics")
    def metrics() -> Response:
        body, content_type = render(metrics_registry)
        return Response(body, media_type=content_type)

    add_rest_rate_limit(app, dataplane, authenticator_for(config))
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=config.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=EXPOSED_HEADERS,
        )
    app.add_middleware(BodyLimit, max_bytes=config.max_request_bytes)
    # Added last, so outermost: even a 413 or a CORS refusal gets a request id (and an access
    # line, when serve.access_log is on).
    app.add_middleware(RequestContext, access_log=config.access_log)
    return app


# -- auth ------------------------------------------------------------------------------------


def bearer_checker(config: ServeConfig, scope: str, what: str) -> Callable[[str], None]:
    """A check of an Authorization header's value for ``scope``; raises the auth error."""
    authenticator = authenticator_for(config)

    def check(authorization: str) -> None:
        authenticator.check(
            authorization,
            scope,
            missing=f"{what} needs the header 'Authorization: Bearer <token>'",
            wrong=f"{what} needs a valid token in 'Authorization: Bearer <token>'",
            hint="Ask the server's operator for the token.",
        )

    return check


def _bearer_check(config: ServeConfig, scope: str, what: str) -> Any:
    check_header = bearer_checker(config, scope, what)

    # Async although it awaits nothing: FastAPI runs a plain `def` dependency in its thread
    # pool, a thread hop per request (and per router that declares it) for a header compare.
    async def check(request: Request) -> None:
        check_header(request.headers.get("authorization", ""))

    return Depends(check)


def inference_auth(config: ServeConfig) -> Any:
    return _bearer_check(config, INFERENCE, "this endpoint")


def _admin_auth(config: ServeConfig) -> Any:
    return _bearer_check(config, ADMIN, "the repository API")


# -- errors ----------------------------------------------------------------------------------


def error_response(exc: Exception) -> JSONResponse:
    if isinstance(exc, InferenceError):
        headers = {}
        if isinstance(exc, (QueueFull, RateLimited)):
            headers["Retry-After"] = str(exc.retry_after_seconds)
        if exc.http_status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        if exc.http_status >= 500:
            log.warning("request failed", error=exc.message, status=exc.http_status)
        return JSONResponse({"error": exc.message}, exc.http_status, headers=headers)
    if isinstance(exc, MlpError):  # a bundle or config problem met while answering
        log.error("request failed", error=exc.message)
        return JSONResponse({"error": exc.message}, 500)
    log.error("request failed unexpectedly", exc_info=exc)
    return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, 500)


def _add_error_handlers(app: FastAPI) -> None:
    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    async def on_http(request: Request, exc: Any) -> JSONResponse:
        # The framework's own refusals (no such route, wrong method) in the protocol's shape.
        return JSONResponse(
            {"error": str(exc.detail)}, exc.status_code, headers=getattr(exc, "headers", None)
        )

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)  # registered for that class only
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return JSONResponse({"error": f"invalid request: {problems}"}, 400)

    app.add_exception_handler(MlpError, on_error)
    app.add_exception_handler(Exception, on_error)
    # Keyed by status code, so the framework's HTTP exceptions match whatever their class.
    for status in range(400, 500):
        app.add_exception_handler(status, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)


# -- routes ----------------------------------------------------------------------------------


def _health_router(dataplane: DataPlane) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/v2/health/live", summary="The server process is up")
    def live() -> JSONResponse:
        ok = dataplane.live()
        return JSONResponse({"live": ok}, 200 if ok else 503)

    @router.get("/v2/health/ready", summary="Every served model is loaded and ready")
    def ready() -> JSONResponse:
        ok = dataplane.ready()
        return JSONResponse({"ready": ok}, 200 if ok else 503)

    @router.get("/v2", tags=["metadata"], summary="Server metadata")
    def server_metadata() -> dict:
        return dataplane.server_metadata()

    return router


def _metadata_json(meta: ModelMetadata) -> dict:
    def tensors(items: list) -> list[dict]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

    return {
        "name": meta.name,
        "versions": list(meta.versions),
        "platform": meta.platform,
        "inputs": tensors(meta.inputs),
        "outputs": tensors(meta.outputs),
        "parameters": dict(meta.parameters),
    }


def _model_router(dataplane: DataPlane, config: ServeConfig) -> APIRouter:
    router = APIRouter(tags=["models"], dependencies=[inference_auth(config)])

    def both(suffix: str, method: str = "GET", **kwargs: Any) -> Any:
        # Each model route exists with and without /versions/{version}.
        def register(fn: Any) -> Any:
            for path in (
                f"/v2/models/{{model}}{suffix}",
                f"/v2/models/{{model}}/versions/{{version}}{suffix}",
            ):
                router.add_api_route(path, fn, methods=[method], **kwargs)
            return fn

        return register

    @both("", summary="Model metadata: versions, inputs and outputs")
    def metadata(model: str, version: str | None = None) -> dict:
        return _metadata_json(dataplane.model_metadata(model, version))

    @both("/ready", summary="Whether the model (version) can answer")
    def model_ready(model: str, version: str | None = None) -> JSONResponse:
        if dataplane.model_ready(model, version):
            return JSONResponse({"name": model, "ready": True})
        if model not in dataplane.repository.names():
            raise ModelNotFound(f"unknown model {model!r}")
        return JSONResponse({"name": model, "ready": False}, 503)

    @both("/config", summary="Model configuration, in Triton's JSON form")
    def model_config(model: str, version: str | None = None) -> dict:
        return dataplane.model_config(model, version)

    @both(
        "/infer",
        method="POST",
        summary="Run the model (JSON tensors and the binary tensor extension)",
        openapi_extra=_INFER_DOC,
    )
    async def infer(request: Request, model: str, version: str | None = None) -> Response:
        body = await request.body()
        infer_request = decode_request(body, request.headers.get(HEADER_LENGTH))
        response = await dataplane.infer(model, version, infer_request, PROTOCOL)
        content, headers = encode_response(response, infer_request)
        return Response(content, headers=headers)

    return router


def _repository_router(dataplane: DataPlane, config: ServeConfig) -> APIRouter:
    router = APIRouter(tags=["repository"])

    @router.post(
        "/v2/repository/index",
        summary="Every model version and its state",
        # Read-only: any known token (inference or admin) may list the repository.
        dependencies=[_bearer_check(config, ANY, "this endpoint")],
    )
    async def index(request: Request) -> list[dict]:
        body = await request.body()
        ready_only = False
        if body.strip():
            ready_only = bool(parse_json(body).get("ready", False))
        rows = dataplane.repository_index()
        return [r for r in rows if r["state"] == "READY"] if ready_only else rows

    @router.post(
        "/v2/repository/models/{model}/load",
        summary="Load (or reload) a model from the repository",
        dependencies=[_admin_auth(config)],
    )
    async def load(model: str) -> dict:
        await dataplane.load_model(model)
        return {}

    @router.post(
        "/v2/repository/models/{model}/unload",
        summary="Unload a model; it stays unloaded until loaded again",
        dependencies=[_admin_auth(config)],
    )
    async def unload(model: str) -> dict:
        await dataplane.unload_model(model)
        return {}

    return router


_INFER_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {"type": "object"},
                        "inputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "datatype", "shape"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "datatype": {"type": "string", "example": "FP32"},
                                    "shape": {"type": "array", "items": {"type": "integer"}},
                                    "data": {"type": "array", "items": {}},
                                    "parameters": {"type": "object"},
                                },
                            },
                        },
                        "outputs": {"type": "array", "items": {"type": "object"}},
                    },
                },
                "example": {
                    "inputs": [
                        {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
                    ]
                },
            }
        },
    }
}
