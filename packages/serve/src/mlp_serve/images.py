"""Images sent to the server: decoding an upload, and the bundle's evaluation spec to apply.

The transform itself (resize, crop, scale, normalise) is
:meth:`mlp_core.image_spec.ImageEvalSpec.apply`, the one reference that mlp-data's torch
transform is tested against; the server has no torch and runs exactly that. What is the server's own: refusing what is not a JPEG or PNG as a bad request,
and a spec it cannot apply as a broken bundle.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from mlp_core.image_spec import ImageEvalSpec
from mlp_serve.bundle import Manifest
from mlp_serve.errors import BundleError, InvalidInput
from mlp_serve.rows import predictions_outputs
from mlp_serve.types import InferRequest, Tensor

FORMATS = ("JPEG", "PNG")
IMAGE_INPUT = "image"


def image_spec_of(model: str, manifest: Manifest | None, hint: str) -> ImageEvalSpec:
    """The spec of an image bundle, or an :class:`InvalidInput` for any other model.

    ``hint`` says how this caller sends tensors instead (the REST route, the Predictor).
    """
    if manifest is None or manifest.kind != "image" or not manifest.preprocessing:
        raise InvalidInput(
            f"model {model!r} is not an image bundle with a preprocessing spec", hint=hint
        )
    return eval_spec(manifest.preprocessing)


def images_request(
    spec: ImageEvalSpec,
    images: Sequence[tuple[bytes | Image.Image, str]],
    output_names: list[str],
) -> InferRequest:
    """One batch of images (encoded bytes, or decoded already) with what each is, for errors."""
    if not images:
        raise InvalidInput("no image given")
    arrays = []
    for image, what in images:
        decoded = decode_image(image, what) if isinstance(image, bytes) else image
        arrays.append(spec.apply(decoded))
    batch = np.stack(arrays)
    return InferRequest(
        inputs=[Tensor(IMAGE_INPUT, "FP32", list(batch.shape), batch)],
        outputs=predictions_outputs(output_names),
    )


def eval_spec(preprocessing: Mapping[str, Any]) -> ImageEvalSpec:
    """The bundle's image evaluation spec, or a :class:`BundleError` listing its problems."""
    return ImageEvalSpec.parse(
        preprocessing,
        error=BundleError,
        hint="Export the model again with this version of mlp.",
        source="image preprocessing spec of the bundle",
    )


def decode_image(data: bytes, what: str = "the upload") -> Image.Image:
    """A JPEG or PNG from its bytes; anything else is an :class:`InvalidInput`."""
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
        image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as exc:
        raise InvalidInput(f"{what} is not a readable JPEG or PNG image: {exc}") from None
    return image
