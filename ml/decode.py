"""Decode an uploaded scan into display-ready RGB pixels, or say precisely why not.

Accepts PNG, JPEG, BMP, TIFF and DICOM, greyscale or colour, 8 or 16 bit, any size up to
a pixel limit. The format is sniffed from the content, never trusted from the file name.
No TensorFlow here: the web process uses this module to validate uploads.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_PIXELS = 40_000_000
PIL_FORMATS = {
    "PNG": "PNG",
    "JPEG": "JPEG",
    "BMP": "BMP",
    "TIFF": "TIFF",
    "MPO": "JPEG",
}
DICOM_TAGS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "StudyInstanceUID",
    "AccessionNumber",
    "StudyDate",
    # The scanner: a site calibration may be fitted per scanner model.
    "Manufacturer",
    "ManufacturerModelName",
)


class DecodeError(ValueError):
    """The file is not an image this service can read; the message says why."""


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # (H, W, 3) uint8 RGB
    format: str
    bit_depth: int
    frame_count: int = 1
    pixel_spacing_mm: tuple[float, float] | None = None
    dicom: dict[str, str] | None = None

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


def _read_bytes(source: bytes | str | os.PathLike | BinaryIO) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    if isinstance(source, str | os.PathLike):
        try:
            return Path(source).read_bytes()
        except OSError as exc:
            raise DecodeError(f"cannot read file: {exc.strerror or exc}") from exc
    if hasattr(source, "seek"):
        source.seek(0)
    return source.read()


def _is_dicom(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale any integer or float array to uint8 by its own range (windowing for 16-bit)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    values = array.astype(np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise DecodeError("image has no finite pixel values")
    low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.zeros(array.shape, np.uint8)
    return np.clip(np.round((values - low) / (high - low) * 255.0), 0, 255).astype(
        np.uint8
    )


def to_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    if array.ndim == 3 and array.shape[2] == 4:
        return array[..., :3]
    if array.ndim == 3 and array.shape[2] == 3:
        return array
    raise DecodeError(f"unsupported pixel layout {array.shape}")


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width < 1 or height < 1:
        raise DecodeError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise DecodeError(
            f"image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}"
        )


def _decode_pil(data: bytes, max_pixels: int) -> DecodedImage:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DecodeError(f"image is too large to decode safely: {exc}") from exc
        except UnidentifiedImageError as exc:
            raise DecodeError(
                "not a recognised image (expected PNG, JPEG, BMP, TIFF or DICOM)"
            ) from exc
        except Exception as exc:  # Pillow raises many kinds for corrupt headers
            raise DecodeError(f"unreadable image header: {exc}") from exc
    with image:
        fmt = PIL_FORMATS.get(image.format or "")
        if fmt is None:
            raise DecodeError(
                f"{image.format or 'unknown'} images are not accepted (PNG, JPEG, BMP, TIFF or DICOM)"
            )
        _check_size(image.width, image.height, max_pixels)
        try:
            # Counting frames parses every IFD of a TIFF: a broken one fails here.
            frames = getattr(image, "n_frames", 1)
            image.load()
            mode = image.mode
            if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                array = np.asarray(image)
                bit_depth = (
                    16 if mode.startswith("I;16") or array.max(initial=0) > 255 else 8
                )
                pixels = to_rgb(to_uint8(array))
            else:
                bit_depth = 8
                if mode not in ("L", "RGB"):  # palette, CMYK, alpha, 1-bit, YCbCr...
                    image = image.convert("RGB")
                pixels = to_rgb(np.asarray(image))
        except DecodeError:
            raise
        except (
            Exception
        ) as exc:  # truncated data surfaces as OSError, SyntaxError or ValueError
            raise DecodeError(f"image data is corrupt or truncated: {exc}") from exc
    return DecodedImage(
        np.ascontiguousarray(pixels, dtype=np.uint8), fmt, bit_depth, frame_count=frames
    )


def _decode_dicom(data: bytes, max_pixels: int) -> DecodedImage:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
        # pydicom parses element values lazily: make a malformed header fail here, as a
        # DecodeError, rather than later wherever a value is first read.
        for element in dataset.iterall():
            _ = element.value
    except InvalidDicomError as exc:
        raise DecodeError(f"invalid DICOM file: {exc}") from exc
    except Exception as exc:
        raise DecodeError(f"DICOM header is unreadable: {exc}") from exc
    if "PixelData" not in dataset and "FloatPixelData" not in dataset:
        raise DecodeError("DICOM file has no pixel data (not an image object)")
    rows, columns = int(dataset.get("Rows", 0)), int(dataset.get("Columns", 0))
    _check_size(columns, rows, max_pixels)
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    syntax = getattr(dataset.get("file_meta"), "TransferSyntaxUID", None)
    syntax_name = getattr(syntax, "name", None) or str(syntax or "unknown")
    try:
        # Only the first frame is decoded: a long cine loop never sits whole in memory.
        # pydicom converts YBR_FULL / YBR_FULL_422 (native or JPEG) to RGB itself.
        dataset.pixel_array_options(index=0)
        array = dataset.pixel_array
    except NotImplementedError as exc:
        raise DecodeError(
            f"DICOM transfer syntax {syntax_name} is not supported: {exc}"
        ) from exc
    except Exception as exc:
        raise DecodeError(
            f"DICOM pixel data ({syntax_name}) cannot be decoded: {exc}"
        ) from exc
    samples = int(dataset.get("SamplesPerPixel", 1))
    interpretation = str(dataset.get("PhotometricInterpretation", ""))
    if samples == 1 and interpretation == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        try:
            array = apply_color_lut(array, dataset)
        except Exception as exc:
            raise DecodeError(f"DICOM palette colour table is unusable: {exc}") from exc
    elif samples == 1 and interpretation == "MONOCHROME1":
        array = array.max() - array
    elif samples not in (1, 3):
        raise DecodeError(f"DICOM with {samples} samples per pixel is not supported")
    bit_depth = int(dataset.get("BitsStored", dataset.get("BitsAllocated", 8)))
    pixels = to_rgb(to_uint8(np.asarray(array)))
    spacing = dataset.get("PixelSpacing") or _ultrasound_spacing(dataset)
    return DecodedImage(
        np.ascontiguousarray(pixels),
        "DICOM",
        16 if bit_depth > 8 else 8,
        frame_count=frames,
        pixel_spacing_mm=(float(spacing[0]), float(spacing[1])) if spacing else None,
        dicom={tag: str(dataset.get(tag, "") or "") for tag in DICOM_TAGS},
    )


def _ultrasound_spacing(dataset) -> tuple[float, float] | None:
    """Ultrasound regions give physical deltas in cm per pixel (units code 3 = cm)."""
    for region in dataset.get("SequenceOfUltrasoundRegions", []) or []:
        if (
            region.get("PhysicalUnitsXDirection") == 3
            and region.get("PhysicalUnitsYDirection") == 3
        ):
            return float(region.PhysicalDeltaY) * 10.0, float(
                region.PhysicalDeltaX
            ) * 10.0
    return None


def readable_transfer_syntaxes() -> list[str]:
    """DICOM transfer syntax UIDs whose pixel data the installed decoders read.

    Asked of pydicom rather than listed here, so that whatever accepts DICOM over the
    network proposes exactly what :func:`decode_image` can open (JPEG, JPEG-LS and JPEG
    2000 only when their pylibjpeg plugins are installed).
    """
    import pydicom.uid
    from pydicom.pixels import get_decoder

    readable = []
    for uid in pydicom.uid.AllTransferSyntaxes:
        try:
            available = get_decoder(uid).is_available
        except NotImplementedError:  # video and the like: no decoder in pydicom at all
            continue
        if available:
            readable.append(str(uid))
    # A receiver that accepts the first syntax it knows keeps explicit VR files as sent.
    readable.sort(key=lambda uid: uid != pydicom.uid.ExplicitVRLittleEndian)
    return readable


def decode_image(
    source: bytes | str | os.PathLike | BinaryIO, *, max_pixels: int = MAX_PIXELS
) -> DecodedImage:
    """Decode a scan file. Raises :class:`DecodeError` with a specific reason when it cannot."""
    data = _read_bytes(source)
    if not data:
        raise DecodeError("file is empty")
    if _is_dicom(data):
        return _decode_dicom(data, max_pixels)
    return _decode_pil(data, max_pixels)
