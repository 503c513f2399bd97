"""Images the review page and the report draw: a browser-ready copy of the scan and a
transparent lesion-outline layer made from the stored mask."""

from __future__ import annotations

import io

from django.core.files.storage import default_storage
from PIL import Image, ImageChops, ImageFilter

from ml.decode import decode_image

# The colour ml draws the outline in on the overlay PNG (yellow reads well on grey).
OUTLINE_RGB = (255, 220, 0)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def scan_display_png(name: str) -> bytes:
    """The scan as a PNG any browser and reportlab can draw (DICOM and TIFF included)."""
    with default_storage.open(name, "rb") as stored:
        decoded = decode_image(stored)
    return _png(Image.fromarray(decoded.pixels))


def outline_layer_png(mask_name: str) -> bytes:
    """The mask's boundary as opaque yellow on a transparent layer of the same size.

    Same thickness rule as the overlay ml renders (about 1/250 of the short side), so
    that the toggled layer and the stored overlay show the same outline.
    """
    with default_storage.open(mask_name, "rb") as stored:
        mask = Image.open(stored).convert("L")
        mask.load()
    mask = mask.point(lambda v: 255 if v >= 128 else 0)
    width = max(1, round(min(mask.size) / 250))
    eroded = mask.filter(ImageFilter.MinFilter(2 * width + 1))
    edge = ImageChops.subtract(mask, eroded)
    layer = Image.new("RGBA", mask.size, (*OUTLINE_RGB, 0))
    layer.putalpha(edge)
    return _png(layer)
