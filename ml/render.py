"""Overlays a radiologist looks at: heatmaps blended on the scan, the lesion outline on the scan."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from scipy import ndimage

OUTLINE_COLOUR = np.array(
    [255, 220, 0], np.uint8
)  # yellow reads well on grey ultrasound
HEATMAP_OPACITY = 0.5

# Piecewise-linear "jet"-like colour map: blue (0) -> cyan -> yellow -> red (1).
_STOPS = np.array([0.0, 0.35, 0.65, 1.0])
_COLOURS = np.array(
    [[0, 0, 255], [0, 255, 255], [255, 255, 0], [255, 0, 0]], np.float32
)


_LEVELS = np.linspace(0.0, 1.0, 256)
_COLOUR_LUT = np.stack(
    [np.interp(_LEVELS, _STOPS, _COLOURS[:, c]) for c in range(3)], axis=-1
).astype(np.float32)


def _levels(heatmap: np.ndarray) -> np.ndarray:
    return np.clip(heatmap * 255.0 + 0.5, 0, 255).astype(np.uint8)


def colourise(heatmap: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] to (H, W, 3) uint8."""
    return _COLOUR_LUT[_levels(heatmap)].astype(np.uint8)


def heatmap_overlay(
    image: np.ndarray, heatmap: np.ndarray, opacity: float = HEATMAP_OPACITY
) -> np.ndarray:
    """Blend the heatmap onto the scan; cold regions stay mostly transparent so anatomy shows."""
    levels = _levels(heatmap)
    alpha = (opacity * np.sqrt(_LEVELS)).astype(np.float32)[levels][..., None]
    blended = image * (1.0 - alpha) + _COLOUR_LUT[levels] * alpha
    return blended.astype(np.uint8)


def outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a bool mask, about 1/250 of the image's short side thick."""
    if not mask.any():
        return np.zeros_like(mask, dtype=bool)
    width = max(1, round(min(mask.shape) / 250))
    return mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=0)


def mask_overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    result = image.copy()
    result[outline(mask)] = OUTLINE_COLOUR
    return result


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    # Level 1: these are regenerated from results at will; speed beats a few kilobytes.
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
