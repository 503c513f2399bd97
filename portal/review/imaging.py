"""Images the review page and the report draw: a browser-ready copy of the scan and a
transparent lesion-outline layer made from the stored mask."""

from __future__ import annotations

import numpy as np
from django.core.files.storage import default_storage
from PIL import Image

from ml.decode import decode_image
from ml.render import OUTLINE_COLOUR, outline, png_bytes


def scan_display_png(name: str) -> bytes:
    """The scan as a PNG any browser and reportlab can draw (DICOM and TIFF included)."""
    with default_storage.open(name, "rb") as stored:
        decoded = decode_image(stored)
    return png_bytes(decoded.pixels)


def outline_layer_png(mask_name: str) -> bytes:
    """The mask's boundary on a transparent layer of the same size, drawn by the same
    code as the overlay ml renders, so the toggled layer and the stored overlay agree."""
    with default_storage.open(mask_name, "rb") as stored, Image.open(stored) as image:
        mask = np.asarray(image.convert("L")) >= 128
    layer = np.zeros((*mask.shape, 4), np.uint8)
    layer[outline(mask)] = (*OUTLINE_COLOUR, 255)
    return png_bytes(layer)
