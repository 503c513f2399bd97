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


# --- what a worker stores, and the composites drawn from it on demand ---------------

DISPLAY_MAX_SIDE = 1024  # the longest side of the browser's copy of a scan


def display_size(
    width: int, height: int, max_side: int = DISPLAY_MAX_SIDE
) -> tuple[int, int]:
    """The size of the display copy: the scan's own when it fits, else scaled down."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def display_png(pixels: np.ndarray, max_side: int = DISPLAY_MAX_SIDE) -> bytes:
    """An 8-bit copy of the scan, longest side at most ``max_side``, for pages and reports.

    Grey scans (the usual ultrasound) are stored as one channel: a third of the bytes.
    """
    height, width = pixels.shape[:2]
    if pixels.ndim == 3 and (
        np.array_equal(pixels[..., 0], pixels[..., 1])
        and np.array_equal(pixels[..., 0], pixels[..., 2])
    ):
        pixels = pixels[..., 0]
    image = Image.fromarray(np.ascontiguousarray(pixels))
    size = display_size(width, height, max_side)
    if size != (width, height):
        image = image.resize(size, Image.BILINEAR, reducing_gap=2.0)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


# The chunks of a PNG that carries nothing but pixels. Any other (gamma, colour
# profile, transparency, text that may name the patient) makes a fresh copy.
_PIXEL_ONLY_CHUNKS = frozenset({b"IHDR", b"IDAT", b"IEND", b"pHYs"})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _plain_png_size(content: bytes) -> tuple[int, int] | None:
    """(width, height) of an 8-bit grey or RGB PNG made only of pixel chunks, else None.

    Reads the chunk headers, not the pixels: Pillow finds text chunks after the image
    data only by decoding it.
    """
    if not content.startswith(_PNG_SIGNATURE) or content[12:16] != b"IHDR":
        return None
    width, height = int.from_bytes(content[16:20]), int.from_bytes(content[20:24])
    bit_depth, colour_type = content[24], content[25]
    if bit_depth != 8 or colour_type not in (0, 2):  # 8-bit grey or RGB
        return None
    position = len(_PNG_SIGNATURE)
    while position + 8 <= len(content):
        length = int.from_bytes(content[position : position + 4])
        chunk = content[position + 4 : position + 8]
        if chunk not in _PIXEL_ONLY_CHUNKS:
            return None
        if chunk == b"IEND":
            return width, height
        position += 12 + length
    return None


def display_copy(
    content: bytes, pixels: np.ndarray, max_side: int = DISPLAY_MAX_SIDE
) -> bytes:
    """The display copy of an uploaded file: the file itself when it already is one.

    An 8-bit grey or RGB PNG within ``max_side`` that carries nothing but pixels shows
    what ``display_png`` would make, so it is kept as it is: encoding a new PNG costs
    more than decoding the upload (7 ms against 4 for a 500 px scan). Anything else
    (DICOM, JPEG, 16-bit, larger, palette, metadata) gets ``display_png(pixels)``.
    """
    size = _plain_png_size(content)
    height, width = pixels.shape[:2]
    if size == (width, height) and max(size) <= max_side:
        return content
    return display_png(pixels, max_side)


def mask_png(mask: np.ndarray) -> bytes:
    """A bool mask as a 1-bit PNG: a few hundred bytes for a typical lesion."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask, dtype=bool)).save(
        buffer, format="PNG", compress_level=1
    )
    return buffer.getvalue()


HEATMAP_STORED_SIDE = 64


def heatmap_png(heatmap: np.ndarray, max_side: int = HEATMAP_STORED_SIDE) -> bytes:
    """A heatmap in [0, 1] as an 8-bit grey PNG (0 cold, 255 hot), at most ``max_side``.

    The network's maps are coarser than that (stride 32 and 8 on a 256 px input, then
    upsampled bilinearly), so sampling them every few pixels and interpolating back
    when drawing loses nothing a reader sees (under 1/255 on average), for almost no
    time in the worker.
    """
    factor = max(1, -(-max(heatmap.shape) // max_side))
    if factor > 1:
        # The value at each block's centre (the 2x2 pixels around it for even
        # factors), which is where drawing it back puts the sample.
        low, high = (factor - 1) // 2, factor // 2
        heatmap = (
            heatmap[low::factor, low::factor][
                : heatmap.shape[0] // factor, : heatmap.shape[1] // factor
            ]
            + heatmap[high::factor, high::factor][
                : heatmap.shape[0] // factor, : heatmap.shape[1] // factor
            ]
        ) / 2
    return png_bytes(_levels(heatmap))


def read_mask(content: bytes) -> np.ndarray:
    """A stored mask (1-bit, or the 0/255 8-bit PNGs of older analyses) as a bool array."""
    with Image.open(io.BytesIO(content)) as image:
        return np.asarray(image.convert("L")) >= 128


def read_heatmap(content: bytes, width: int, height: int) -> np.ndarray:
    """A stored grey heatmap, bilinearly upsampled to (height, width) floats in [0, 1]."""
    with Image.open(io.BytesIO(content)) as image:
        levels = np.asarray(image.convert("L"), np.float32) / 255.0
    return upsample(levels, width, height)


def upsample(values: np.ndarray, width: int, height: int) -> np.ndarray:
    """A float map resized bilinearly to (height, width), clipped to [0, 1]."""
    if values.shape == (height, width):
        return np.clip(values.astype(np.float32), 0, 1)
    resized = Image.fromarray(values.astype(np.float32), mode="F").resize(
        (width, height), Image.BILINEAR
    )
    return np.clip(np.asarray(resized), 0, 1)
