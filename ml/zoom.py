"""Square crops around a lesion box, and putting a crop's mask back where it was taken.

The second look (:class:`ml.inference.Analyzer`, ``second_look`` in ``model.json``) runs the
network again on such a crop; the lesion-crop stage measured in
:mod:`ml.training.crop_stage` classifies one. No TensorFlow here.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

MIN_EXTENT = 32

Box = tuple[int, int, int, int]  # x_min, y_min, x_max, y_max; max exclusive


def crop_extent(box: Box, margin: float) -> int:
    """The side, in the image's pixels, of the square :func:`square_crop` takes: the box's
    longer side plus ``margin`` of it on each side, at least :data:`MIN_EXTENT`."""
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty box {box}")
    return max(round(max(x1 - x0, y1 - y0) * (1 + 2 * margin)), MIN_EXTENT)


def crop_origin(box: Box, extent: int) -> tuple[int, int]:
    """(top, left) of the ``extent`` square centred on ``box``; may lie outside the image."""
    x0, y0, x1, y1 = box
    return round((y0 + y1) / 2 - extent / 2), round((x0 + x1) / 2 - extent / 2)


def square_crop(image: np.ndarray, box: Box, margin: float, side: int) -> np.ndarray:
    """A square of ``image`` (H, W, 3) centred on ``box``, :func:`crop_extent` on a side,
    zero-padded where it leaves the image, resized to ``side`` x ``side`` (bilinear)."""
    extent = crop_extent(box, margin)
    top, left = crop_origin(box, extent)
    height, width = image.shape[:2]
    out = np.zeros((extent, extent, 3), np.uint8)
    ty, tx = max(top, 0), max(left, 0)
    by, bx = min(top + extent, height), min(left + extent, width)
    if by > ty and bx > tx:
        out[ty - top : by - top, tx - left : bx - left] = image[ty:by, tx:bx, :3]
    if extent == side:
        return out
    return np.asarray(Image.fromarray(out).resize((side, side), Image.BILINEAR))


def paste(mask: np.ndarray, crop_mask: np.ndarray, box: Box) -> np.ndarray:
    """``mask`` (H, W) with ``crop_mask`` (E, E, at the crop's own extent) put back where
    :func:`square_crop` took the crop around ``box``: inside the crop the crop's mask
    replaces the mask, outside it the mask is kept."""
    extent = crop_mask.shape[0]
    top, left = crop_origin(box, extent)
    out = mask.copy()
    ty, tx = max(top, 0), max(left, 0)
    by, bx = min(top + extent, mask.shape[0]), min(left + extent, mask.shape[1])
    if by > ty and bx > tx:
        out[ty:by, tx:bx] = crop_mask[ty - top : by - top, tx - left : bx - left]
    return out
