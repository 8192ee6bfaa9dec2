"""Endpoints for people rather than inference clients: JSON rows and image uploads.

``POST /v1/models/{m}/predict`` takes raw tabular features by column name; ``POST
/v1/models/{m}/predict/image`` takes JPEG or PNG uploads (form field ``file``, repeatable for a
batch). Both go through the same data plane as the v2 protocol (validation, batching, metrics) and
answer ``{"predictions": [...]}`` with the bundle's class labels.

The ``/v1`` in the paths is this server's own version of these endpoints; they are not KServe's
V1 protocol (``:predict`` with ``instances``), which mlp-serve does not speak.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from mlp_serve.dataplane import DataPlane
from mlp_serve.detection_images import detection_images_request, format_detections, render_png
from mlp_serve.errors import InvalidInput
from mlp_serve.images import image_spec_of, images_request
from mlp_serve.repository import ModelVersion
from mlp_serve.rest.codec import parse_json
from mlp_serve.rows import feature_schema_of, format_predictions, predict_rows_request

PROTOCOL = "rest"
FILE_FIELD = "file"


def _tensors_hint(model: str) -> str:
    return f"Send tensors to /v2/models/{model}/infer instead."


class Rows(BaseModel):
    """Documents the body of /predict (it is parsed by hand, so errors name row and column)."""

    rows: list[dict[str, Any]] = Field(
        ..., examples=[[{"bill_length_mm": 39.1, "island": "Torgersen", "sex": None}]]
    )


class Predictions(BaseModel):
    predictions: list[dict[str, Any]] = Field(
        ...,
        examples=[[{"label": "Adelie", "probabilities": {"Adelie": 0.9, "Gentoo": 0.1}}]],
    )


class ImagePredictions(BaseModel):
    """One prediction per image: a classification, or a detection model's list of boxes."""

    predictions: list[dict[str, Any] | list[dict[str, Any]]] = Field(
        ...,
        examples=[
            [{"label": "seven", "probabilities": {"seven": 0.9, "one": 0.1}}],
            [[{"box": [12.0, 8.5, 40.2, 33.0], "score": 0.91, "class_id": 1, "label": "circle"}]],
        ],
    )


def convenience_router(dataplane: DataPlane, auth: Any) -> APIRouter:
    router = APIRouter(tags=["predict"], dependencies=[auth])

    @router.post(
        "/v1/models/{model}/predict",
        summary="Predict from rows of raw tabular features",
        response_model=Predictions,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": Rows.model_json_schema()}},
            }
        },
    )
    async def predict(request: Request, model: str, version: str | None = None) -> dict:
        entry = dataplane.model_entry(model, version)
        manifest = entry.manifest
        schema = feature_schema_of(model, manifest, _tensors_hint(model))
        document = parse_json(await request.body())
        infer_request = predict_rows_request(
            schema,
            document.get("rows"),
            [t.name for t in entry.runtime.inputs],
            [t.name for t in entry.runtime.outputs],
        )
        response = await dataplane.infer(model, str(entry.version), infer_request, PROTOCOL)
        return {"predictions": format_predictions(response, manifest and manifest.class_labels)}

    @router.post(
        "/v1/models/{model}/predict/image",
        summary="Predict from uploaded JPEG or PNG images (form field 'file', repeatable)",
        response_model=ImagePredictions,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": [FILE_FIELD],
                            "properties": {
                                FILE_FIELD: {
                                    "type": "array",
                                    "items": {"type": "string", "format": "binary"},
                                }
                            },
                        }
                    }
                },
            }
        },
    )
    async def predict_image(
        request: Request,
        model: str,
        version: str | None = None,
        confidence: str | None = None,
        iou: str | None = None,
        max_detections: str | None = None,
        render: bool = False,
    ) -> Any:
        """Detection bundles answer each image's boxes in its own pixels, ``[{box, score,
        class_id, label}]`` (``confidence``, ``iou`` and ``max_detections`` override the
        bundle's defaults), or with ``render=true`` the image with its boxes drawn, as a PNG."""
        entry = dataplane.model_entry(model, version)
        manifest = entry.manifest
        if entry.detection is not None:
            thresholds = {"confidence": confidence, "iou": iou, "max_detections": max_detections}
            return await _detect(dataplane, entry, await _uploads(request), thresholds, render)
        spec = image_spec_of(model, manifest, _tensors_hint(model))
        images = await _uploads(request)
        infer_request = images_request(spec, images, [t.name for t in entry.runtime.outputs])
        response = await dataplane.infer(model, str(entry.version), infer_request, PROTOCOL)
        return {"predictions": format_predictions(response, manifest and manifest.class_labels)}

    return router


async def _uploads(request: Request) -> list[tuple[bytes, str]]:
    """The uploaded files of a multipart form, with what each is (for errors)."""
    try:
        form = await request.form()
    except InvalidInput:
        raise
    except Exception as exc:  # starlette's multipart errors
        raise InvalidInput(f"expected a multipart/form-data upload: {exc}") from None
    # A file part comes as an upload object, a plain field as str.
    uploads = [f for f in form.getlist(FILE_FIELD) if not isinstance(f, str)]
    if not uploads:
        raise InvalidInput(f"upload the image as the multipart form field {FILE_FIELD!r}")
    return [(await upload.read(), f"upload {upload.filename!r}") for upload in uploads]


async def _detect(
    dataplane: DataPlane,
    entry: ModelVersion,
    images: list[tuple[bytes, str]],
    thresholds: dict[str, str | None],
    render: bool,
) -> Any:
    assert entry.detection is not None
    if render and len(images) != 1:
        raise InvalidInput(f"render=true draws one image; {len(images)} were uploaded")
    detection = entry.detection
    infer_request, decoded, letterboxes = detection_images_request(
        detection.spec,
        detection.image_input.name,
        images,
        {k: v for k, v in thresholds.items() if v is not None},
    )
    response = await dataplane.infer(entry.name, str(entry.version), infer_request, PROTOCOL)
    found = format_detections(response, letterboxes, detection.class_labels)
    if render:
        return Response(render_png(decoded[0], found[0]), media_type="image/png")
    return {"predictions": found}
