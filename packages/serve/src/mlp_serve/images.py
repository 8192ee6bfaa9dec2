"""Images sent to the server: decoding an upload, and the bundle's evaluation spec to apply.

The transform itself (resize, crop, scale, normalise) is
:meth:`mlp_core.image_spec.ImageEvalSpec.apply`, the one reference that mlp-data's torch
transform is tested against; the server has no torch and runs exactly that. What is the server's own: refusing what is not a JPEG or PNG as a bad request,
and a spec it cannot apply as a broken bundle.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from PIL import Image, UnidentifiedImageError

from mlp_core.image_spec import ImageEvalSpec
from mlp_serve.errors import BundleError, InvalidInput

FORMATS = ("JPEG", "PNG")


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
