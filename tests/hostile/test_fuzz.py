"""Property-based fuzzing of the decoding entry points (hypothesis).

Whatever the bytes, `ml.decode.decode_image` returns display-ready pixels within the
limit or raises DecodeError with a reason, and upload validation returns a validated
upload or raises UploadRejected: never any other exception, never a hang.

Bounded for CI by the "ci" profile (the default). For a long run:

    HYPOTHESIS_PROFILE=fuzz-long make fuzz          # or:
    HYPOTHESIS_PROFILE=fuzz-long .venv/bin/python -m pytest tests/hostile/test_fuzz.py
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.uploadedfile import SimpleUploadedFile
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from ml.decode import DecodedImage, DecodeError, decode_image
from tests.hostile.corpus import good_dicom, good_jpeg, good_png, scan_pixels

settings.register_profile(
    "ci",
    max_examples=150,
    deadline=5000,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "fuzz-long",
    max_examples=20_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
FUZZ = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
MAX_PIXELS = 1_000_000


def _save(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


SEEDS = {
    "png": good_png(40, 32),
    "jpeg": good_jpeg(),
    "bmp": _save(Image.fromarray(scan_pixels(24, 16)), "BMP"),
    "tiff": _save(Image.fromarray(scan_pixels(24, 16)), "TIFF"),
    "gif": _save(Image.fromarray(scan_pixels(24, 16)), "GIF"),
    "dicom": good_dicom(),
}


def _check_decoded(image: DecodedImage) -> None:
    assert image.pixels.dtype == np.uint8
    assert image.pixels.ndim == 3 and image.pixels.shape[2] == 3
    assert 1 <= image.width and 1 <= image.height
    assert image.width * image.height <= MAX_PIXELS
    assert image.format in {"PNG", "JPEG", "BMP", "TIFF", "DICOM"}
    assert image.bit_depth in (8, 16)


def _decode_or_reason(data: bytes) -> None:
    try:
        image = decode_image(data, max_pixels=MAX_PIXELS)
    except DecodeError as exc:
        assert str(exc).strip(), "a DecodeError must say why"
        return
    _check_decoded(image)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A real file of some format with a few bytes flipped, cut, inserted or repeated."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        position = draw(st.integers(0, len(data) - 1))
        operation = draw(st.sampled_from(["flip", "set", "cut", "insert", "repeat"]))
        if operation == "flip":
            data[position] ^= draw(st.integers(1, 255))
        elif operation == "set":
            data[position] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xFF]))
        elif operation == "cut":
            del data[position:]
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        else:
            data[position:position] = data[position : position + 64] * 4
    return bytes(data)


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_decode_or_fail_with_a_reason(data):
    _decode_or_reason(data)


# Found by this test: a TIFF whose IFD lost its ImageWidth raised TypeError while its
# frames were counted; ml.decode now reports it as a DecodeError.
@FUZZ
@given(mutated())
def test_mutated_real_files_decode_or_fail_with_a_reason(data):
    _decode_or_reason(data)


@FUZZ
@given(
    width=st.integers(1, 64),
    height=st.integers(1, 64),
    mode=st.sampled_from(
        ["L", "RGB", "RGBA", "LA", "P", "CMYK", "I;16", "1", "I", "F"]
    ),
    fmt=st.sampled_from(["PNG", "JPEG", "BMP", "TIFF"]),
    seed=st.integers(0, 2**16),
)
def test_every_valid_image_decodes_to_its_own_size(width, height, mode, fmt, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width), np.uint8)
    image = Image.fromarray(pixels).convert(mode if mode != "I;16" else "I")
    if mode == "I;16":
        image = Image.fromarray(pixels.astype(np.uint16) * 257)
    try:
        data = _save(image, fmt)
    except (OSError, ValueError, KeyError):
        return  # this format cannot hold this mode: nothing to decode
    decoded = decode_image(data, max_pixels=MAX_PIXELS)
    _check_decoded(decoded)
    assert (decoded.width, decoded.height) == (width, height)


@pytest.mark.django_db
@FUZZ
@given(
    name=st.text(min_size=0, max_size=400),
    data=st.one_of(st.binary(max_size=2048), mutated()),
)
def test_upload_validation_accepts_or_refuses_with_a_reason(name, data):
    from portal.clinical.uploads import (
        UploadRejected,
        ValidatedUpload,
        validate_content,
    )

    # The limit as an argument: a settings override per example would nest thousands deep.
    try:
        uploaded = SimpleUploadedFile(name.replace("\x00", "") or "x", data)
    except SuspiciousFileOperation:
        # A name such as "/" that Django's request parser never hands to a view.
        assume(False)
    try:
        result = validate_content(
            filename=uploaded.name, content=uploaded.read(), max_pixels=MAX_PIXELS
        )
    except UploadRejected as exc:
        assert str(exc).strip()
        assert "could not be read as an image" not in str(exc), "a decoder crashed"
        return
    assert isinstance(result, ValidatedUpload)
    assert len(result.original_filename) <= 255
    assert 1 <= result.width and 1 <= result.height
    assert result.width * result.height <= MAX_PIXELS
    assert result.format in {"PNG", "JPEG", "BMP", "TIFF", "DICOM"}
    assert result.display.startswith(b"\x89PNG")


# Found by `make fuzz` (the long profile): pydicom parses elements lazily, so a header
# element with an unknown VR used to raise NotImplementedError after dcmread.
def test_a_dicom_header_element_with_an_unknown_vr_is_a_decode_error():
    data = good_dicom().replace(b"\x28\x00\x11\x00US", b"\x28\x00\x11\x00TS")
    with pytest.raises(DecodeError):
        decode_image(data)
