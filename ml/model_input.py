"""A scan as the network takes it, made once when the scan is stored.

:meth:`ml.inference.Analyzer.analyze` squeezes every image to the network's square with
:func:`resize_for_model` before anything else looks at it (the network, the ultrasound
gate); only the lesion mask goes back to the image's own size. The portal decodes each
upload anyway to validate it, so it makes that square there and stores it beside the
scan (:func:`to_npy`): the worker then reads a few tens of kilobytes instead of decoding
the original and resizing it again, and gets the very pixels it would have made.

Stored as a .npy array (never pickled): (S, S) when the three channels are equal (a grey
scan, once resized), else (S, S, 3). No TensorFlow here: the web process makes these.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image


class ModelInputError(ValueError):
    """A stored model input that cannot be used; the message says why."""


@dataclass(frozen=True)
class ModelInput:
    """The network's input of one scan and the scan's own size (the mask's size)."""

    pixels: np.ndarray  # (S, S, 3) uint8 RGB
    height: int
    width: int

    @property
    def side(self) -> int:
        return int(self.pixels.shape[0])


def resize_for_model(pixels: np.ndarray, side: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB to (side, side, 3): the whole image squeezed, bilinear.

    The one definition: Analyzer.analyze and the portal's stored inputs both call it.
    """
    return np.asarray(Image.fromarray(pixels).resize((side, side), Image.BILINEAR))


def model_input(pixels: np.ndarray, side: int) -> ModelInput:
    """The model input of decoded (H, W, 3) uint8 RGB pixels."""
    height, width = pixels.shape[:2]
    return ModelInput(resize_for_model(pixels, side), height=height, width=width)


def to_npy(model_input: ModelInput) -> bytes:
    """The stored form: one channel when all three are equal (nothing is lost)."""
    pixels = model_input.pixels
    if (pixels[..., 0] == pixels[..., 1]).all() and (
        pixels[..., 0] == pixels[..., 2]
    ).all():
        pixels = pixels[..., 0]
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(pixels), allow_pickle=False)
    return buffer.getvalue()


def from_npy(content: bytes, *, side: int, height: int, width: int) -> ModelInput:
    """A stored model input, checked to be a `side` px square of uint8 pixels."""
    try:
        pixels = np.load(io.BytesIO(content), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ModelInputError(f"not a readable array: {exc}") from None
    if pixels.dtype != np.uint8 or pixels.shape[:2] != (side, side):
        raise ModelInputError(
            f"holds {pixels.dtype} {pixels.shape}, not a {side} px uint8 square"
        )
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    elif pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ModelInputError(f"holds {pixels.shape}, not grey or RGB pixels")
    if height < 1 or width < 1:
        raise ModelInputError(f"the scan's size {width}x{height} is not an image's")
    return ModelInput(pixels, height=height, width=width)
