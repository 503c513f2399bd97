"""The model input stored with each scan (ml.model_input): what the worker reads
instead of decoding the original."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest

from ml.decode import decode_image
from ml.model_input import ModelInputError, from_npy, model_input, to_npy
from tests.conftest import SCANS_DIR

GREY_SCAN = "normal/case209.png"
COLOUR_SCAN = "benign/case014.jpg"


def _round_trip(path: str, side: int = 256):
    image = decode_image(SCANS_DIR / path)
    made = model_input(image.pixels, side)
    stored = to_npy(made)
    read = from_npy(stored, side=side, height=image.height, width=image.width)
    return image, made, stored, read


@pytest.mark.parametrize("path", [GREY_SCAN, COLOUR_SCAN])
def test_what_is_read_back_is_what_was_made(path):
    image, made, _, read = _round_trip(path)
    assert made.pixels.shape == read.pixels.shape == (256, 256, 3)
    assert read.pixels.dtype == np.uint8
    np.testing.assert_array_equal(read.pixels, made.pixels)
    assert (read.height, read.width) == (image.height, image.width)


def test_a_grey_scan_is_stored_as_one_channel_a_colour_one_as_three():
    *_, grey, _ = _round_trip(GREY_SCAN)
    *_, colour, _ = _round_trip(COLOUR_SCAN)
    assert np.load(io.BytesIO(grey)).shape == (256, 256)
    assert np.load(io.BytesIO(colour)).shape == (256, 256, 3)
    assert len(grey) < 256 * 256 + 200


def test_an_input_made_for_another_model_size_is_refused():
    image, _, stored, _ = _round_trip(GREY_SCAN, side=224)
    with pytest.raises(ModelInputError, match="not a 256 px uint8 square"):
        from_npy(stored, side=256, height=image.height, width=image.width)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not an array at all",
        pickle.dumps(np.zeros((256, 256), np.uint8)),
    ],
)
def test_a_file_that_is_no_stored_array_is_refused(content):
    with pytest.raises(ModelInputError, match="not a readable array"):
        from_npy(content, side=256, height=10, width=10)


def test_an_array_of_objects_is_never_unpickled():
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ModelInputError):
        from_npy(buffer.getvalue(), side=1, height=10, width=10)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((256, 256), np.float32),
        np.zeros((256, 128), np.uint8),
        np.zeros((256, 256, 4), np.uint8),
    ],
)
def test_arrays_of_the_wrong_kind_are_refused(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    with pytest.raises(ModelInputError):
        from_npy(buffer.getvalue(), side=256, height=10, width=10)
