"""The reader's lesion outline as the review form posts it: a PNG data URL of the
editor's mask (opaque where the lesion is), decoded to a bool array at the scan's size."""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
from django.core.exceptions import ValidationError
from PIL import Image

PNG_DATA_URL = "data:image/png;base64,"
# A scan is at most a few megapixels; the editor posts one PNG of that size.
MAX_POSTED_BYTES = 8 * 1024 * 1024
MAX_PIXELS = 40_000_000


def decode_outline_png(data_url: str) -> np.ndarray:
    """The mask a data URL carries as bool (H, W): alpha >= 128 where it has an alpha
    channel, else grey >= 128. Anything else is a ValidationError saying what is wrong."""
    if not data_url.startswith(PNG_DATA_URL):
        raise ValidationError("The outline must be posted as a PNG data URL.")
    encoded = data_url[len(PNG_DATA_URL) :]
    if len(encoded) > MAX_POSTED_BYTES * 4 // 3 + 4:
        raise ValidationError("The outline image is too large.")
    try:
        content = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError("The outline is not valid base64.") from None
    try:
        with Image.open(io.BytesIO(content)) as image:
            if image.format != "PNG":
                raise ValidationError("The outline must be a PNG image.")
            if image.width * image.height > MAX_PIXELS:
                raise ValidationError("The outline image has too many pixels.")
            if "A" in image.getbands():
                pixels = np.asarray(image.getchannel("A"))
            else:
                pixels = np.asarray(image.convert("L"))
    except ValidationError:
        raise
    except Exception:  # noqa: BLE001 - Pillow raises many kinds for a broken file
        raise ValidationError("The outline is not a readable PNG image.") from None
    return pixels >= 128
