"""Files the ingestion tests upload: DICOM (bench.synthetic), zips built in memory."""

from __future__ import annotations

import io
import stat
import zipfile
from collections.abc import Iterable
from typing import Any

import numpy as np
from PIL import Image

from bench.synthetic import ultrasound_dicom

# Smooth gradients: lossy JPEG keeps them close to the original.
_Y, _X = np.mgrid[0:48, 0:64]
GREY = ((_X * 3 + _Y * 2) % 256).astype(np.uint8)
RGB = np.stack([GREY, 255 - GREY, (_Y * 5 % 256).astype(np.uint8)], axis=-1)


def png(
    width: int = 64, height: int = 48, *, value: int = 128, mode: str = "L"
) -> bytes:
    """A PNG whose bytes differ with `value` (so each is a different image)."""
    array = np.full((height, width), value, np.uint8)
    array[0, 0] = (value + 1) % 256
    image = Image.fromarray(array)
    if mode != "L":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def dicom(pixels: np.ndarray | None = GREY, **options: Any) -> bytes:
    """An ultrasound DICOM file of GREY by default; options: `ultrasound_dataset`'s."""
    return ultrasound_dicom(pixels, **options)


def zip_of(
    members: Iterable[tuple[str, bytes]],
    *,
    compression: int = zipfile.ZIP_DEFLATED,
    symlinks: Iterable[tuple[str, str]] = (),
) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, content in members:
            archive.writestr(zipfile.ZipInfo(name), content, compress_type=compression)
        for name, target in symlinks:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


def assert_model_input_stored(scan: Any, side: int = 256) -> None:
    """The scan carries the model input of its own decoded pixels (what the worker
    reads instead of decoding it), stored under a name that says nothing of the
    patient."""
    from django.core.files.storage import default_storage

    from ml.decode import decode_image
    from ml.model_input import from_npy, model_input

    assert scan.model_input.name == (f"scans/{scan.study_id}/{scan.uuid}-input.npy"), (
        scan.model_input.name
    )
    with default_storage.open(scan.original.name, "rb") as original:
        pixels = decode_image(original.read()).pixels
    with default_storage.open(scan.model_input.name, "rb") as stored:
        read = from_npy(stored.read(), side=side, height=scan.height, width=scan.width)
    np.testing.assert_array_equal(read.pixels, model_input(pixels, side).pixels)
