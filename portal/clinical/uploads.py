"""Upload validation: a file is accepted only if it really decodes within the limits."""

from __future__ import annotations

import hashlib
import logging
import unicodedata
from dataclasses import dataclass

from django.conf import settings

from ml.decode import DecodeError, decode_image
from ml.model_input import model_input, to_npy
from ml.render import display_copy

logger = logging.getLogger(__name__)


def safe_filename(name: str) -> str:
    """A file name as it may be stored and shown: without control and format
    characters. Bidirectional overrides and isolates (U+202A-U+202E, U+2066-U+2069, the
    marks) are format characters: "\u202egnp.exe" would show as "exe.png"."""
    cleaned = "".join(
        char for char in name if unicodedata.category(char) not in ("Cc", "Cf")
    )
    return cleaned.strip() or "(no name)"


class UploadRejected(ValueError):
    """str() is the reason shown next to the file name."""


@dataclass(frozen=True)
class ValidatedUpload:
    """A file that decoded within the limits, with what storing it as a scan needs.

    The decoded pixels are not kept: a scan needs the image's size, format, spacing and
    DICOM tags, and the worker reads the model input made here (or, without one,
    decodes the stored file again).
    """

    original_filename: str
    content: bytes
    sha256: str
    width: int
    height: int
    format: str
    # The display copy, made here while the pixels are decoded (or the upload itself
    # when it already is one): nothing decodes the original again to show it.
    display: bytes
    pixel_spacing_mm: tuple[float, float] | None = None
    dicom: dict[str, str] | None = None
    # The network's input (ml.model_input, .npy), made while the pixels are decoded,
    # for the model size the caller named: the worker reads it instead of decoding the
    # original. None when no size was named.
    model_input: bytes | None = None


def validate_content(
    *,
    filename: str,
    content: bytes,
    max_pixels: int | None = None,
    model_input_side: int | None = None,
) -> ValidatedUpload:
    """Decode a file's bytes and return what storing it needs, or UploadRejected with
    the reason. The one validation of uploads, imports and received DICOM instances;
    the size limit is checked by ingestion, which reads the bytes (ingest/services.py).

    With `model_input_side` (the side of the square the model that will analyse the
    scan takes) the upload also carries that model input."""
    max_pixels = max_pixels or settings.UPLOAD_MAX_PIXELS
    if not content:
        raise UploadRejected("file is empty")
    try:
        image = decode_image(content, max_pixels=max_pixels)
    except DecodeError as exc:
        raise UploadRejected(str(exc)) from None
    except Exception:
        # A decoder bug must not take the whole upload down; the file is still refused.
        logger.exception("unexpected error while decoding an upload")
        raise UploadRejected("file could not be read as an image") from None
    check_scan_shape(width=image.width, height=image.height)
    return ValidatedUpload(
        original_filename=safe_filename(filename)[:255],
        content=content,
        sha256=hashlib.sha256(content).hexdigest(),
        width=image.width,
        height=image.height,
        format=image.format,
        display=display_copy(content, image.pixels),
        pixel_spacing_mm=image.pixel_spacing_mm,
        dicom=image.dicom,
        model_input=None
        if model_input_side is None
        else to_npy(model_input(image.pixels, model_input_side)),
    )


def check_scan_shape(*, width: int, height: int) -> None:
    """Refuse a picture no ultrasound scan could be (UPLOAD_MIN_SIDE, UPLOAD_MAX_ASPECT_RATIO).

    The model would analyse a 1x1 dot or a 60000x1 strip and return a confident label;
    a clinician is better served by a refusal that says why.
    """
    min_side = settings.UPLOAD_MIN_SIDE
    max_ratio = settings.UPLOAD_MAX_ASPECT_RATIO
    shorter, longer = sorted((width, height))
    if shorter < min_side:
        raise UploadRejected(
            f"image is {width}x{height} pixels, smaller than the minimum of {min_side} "
            "pixels on each side: too small to be an ultrasound scan"
        )
    if longer > max_ratio * shorter:
        raise UploadRejected(
            f"image is {width}x{height} pixels, an aspect ratio of {longer / shorter:.1f}:1, "
            f"beyond the limit of {max_ratio:g}:1: not the shape of an ultrasound scan"
        )
