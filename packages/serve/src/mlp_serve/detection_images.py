"""Detection on whole images: letterbox them, and bring the boxes back into their pixels.

``POST /v1/models/{m}/predict/image`` on a detection bundle (and the in-process paths that
mirror it) sends JPEG or PNG images of any size: each is letterboxed with the bundle's spec
(:meth:`mlp_core.image_spec.ImageEvalSpec.apply`), the batch goes through the data plane like
any request, and each image's boxes are mapped back with its own
:meth:`~mlp_core.image_spec.Letterbox.to_original` (clipped to the image, as ultralytics'
``scale_boxes``). :func:`render_png` draws them for people who would rather look.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from mlp_core.image_spec import ImageEvalSpec, Letterbox
from mlp_serve.detection import (
    DETECTION_BOXES,
    DETECTION_CLASSES,
    DETECTION_SCORES,
    NUM_DETECTIONS,
)
from mlp_serve.errors import InvalidInput
from mlp_serve.images import decode_image
from mlp_serve.types import InferRequest, InferResponse, RequestedOutput, Tensor

_OUTPUTS = (NUM_DETECTIONS, DETECTION_BOXES, DETECTION_SCORES, DETECTION_CLASSES)
# Box colours by class (cycled): distinct on photos and on grey letterbox padding.
_PALETTE = (
    (255, 56, 56),
    (56, 56, 255),
    (56, 200, 56),
    (255, 157, 0),
    (200, 0, 200),
    (0, 200, 200),
)


def detection_images_request(
    spec: ImageEvalSpec,
    input_name: str,
    images: Sequence[tuple[bytes | Image.Image, str]],
    parameters: Mapping[str, Any] | None = None,
) -> tuple[InferRequest, list[Image.Image], list[Letterbox]]:
    """One batch of images (encoded bytes, or decoded already, with what each is for errors)
    letterboxed by ``spec`` into the input ``input_name``; the decoded images; and where each
    landed in the model input. ``parameters`` go with the request (thresholds)."""
    if not images:
        raise InvalidInput("no image given")
    decoded, boxes, arrays = [], [], []
    for image, what in images:
        picture = decode_image(image, what) if isinstance(image, bytes) else image
        decoded.append(picture)
        boxes.append(spec.letterbox(picture.height, picture.width))
        arrays.append(spec.apply(picture))
    batch = np.stack(arrays)
    name = input_name
    request = InferRequest(
        inputs=[Tensor(name, "FP32", list(batch.shape), batch)],
        outputs=[RequestedOutput(output) for output in _OUTPUTS],
        parameters=dict(parameters or {}),
    )
    return request, decoded, boxes


def format_detections(
    response: InferResponse, letterboxes: Sequence[Letterbox], class_labels: Sequence[str]
) -> list[list[dict[str, Any]]]:
    """Per image, ``[{box: [x1, y1, x2, y2], score, class_id, label}]`` in that image's
    pixels, best score first."""
    outputs = {tensor.name: np.asarray(tensor.data) for tensor in response.outputs}
    counts = outputs[NUM_DETECTIONS]
    found = []
    for image, letterbox in enumerate(letterboxes):
        count = int(counts[image])
        boxes = letterbox.to_original(outputs[DETECTION_BOXES][image, :count])
        scores = outputs[DETECTION_SCORES][image, :count]
        classes = outputs[DETECTION_CLASSES][image, :count]
        found.append(
            [
                {
                    "box": [float(v) for v in box],
                    "score": float(score),
                    "class_id": int(class_id),
                    "label": _label(class_labels, int(class_id)),
                }
                for box, score, class_id in zip(boxes, scores, classes)
            ]
        )
    return found


def render_png(image: Image.Image, detections: Sequence[Mapping[str, Any]]) -> bytes:
    """The image with its detections drawn (box, label and score), as PNG bytes."""
    canvas = image.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(max(canvas.size) / 200))
    for detection in detections:
        x1, y1, x2, y2 = detection["box"]
        colour = _PALETTE[int(detection["class_id"]) % len(_PALETTE)]
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        caption = f"{detection['label']} {detection['score']:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), caption)
        # Above the box where there is room, inside it otherwise.
        shift = bottom - top + 2 if y1 >= bottom - top + 2 else 0
        draw.rectangle((left, top - shift, right + 2, bottom - shift), fill=colour)
        draw.text((x1 + 1, y1 - shift), caption, fill=(255, 255, 255))
    out = io.BytesIO()
    canvas.save(out, format="PNG")
    return out.getvalue()


def _label(class_labels: Sequence[str], class_id: int) -> str:
    return class_labels[class_id] if 0 <= class_id < len(class_labels) else str(class_id)
