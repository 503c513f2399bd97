"""The transparent lesion-outline layer the pages draw over the scan, made from the
stored mask by ml.render's outline rule, so the layer and the drawn overlay agree."""

from __future__ import annotations

import numpy as np
from django.core.files.storage import default_storage

from ml.render import OUTLINE_COLOUR, outline, png_bytes, read_mask


def outline_layer_png(mask_name: str) -> bytes:
    """The mask's boundary on a transparent layer of the same size, drawn by the same
    code as the overlay ml renders, so the toggled layer and the stored overlay agree."""
    with default_storage.open(mask_name, "rb") as stored:
        mask = read_mask(stored.read())
    layer = np.zeros((*mask.shape, 4), np.uint8)
    layer[outline(mask)] = (*OUTLINE_COLOUR, 255)
    return png_bytes(layer)
