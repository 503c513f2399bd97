"""Validation of one file's content. The size limit is checked where the bytes are read
(ingestion: tests/portal/ingest/test_services.py)."""

from __future__ import annotations

import pytest

from portal.clinical.uploads import UploadRejected, validate_content


def test_a_real_png_is_accepted(make_png):
    upload = validate_content(filename="scan.png", content=make_png(48, 36))
    assert (upload.width, upload.height) == (48, 36)
    assert upload.original_filename == "scan.png"


def test_text_renamed_png_is_rejected_with_a_reason():
    with pytest.raises(UploadRejected, match="not a recognised image"):
        validate_content(filename="notes.png", content=b"these are not pixels\n" * 10)


def test_truncated_png_is_rejected(make_png):
    content = make_png(200, 200)
    with pytest.raises(UploadRejected) as excinfo:
        validate_content(filename="cut.png", content=content[: len(content) // 2])
    assert str(excinfo.value)


def test_pixel_limit_is_enforced(make_png):
    with pytest.raises(UploadRejected, match="over the limit"):
        validate_content(
            filename="big.png", content=make_png(100, 100), max_pixels=5000
        )


def test_empty_file_is_rejected():
    with pytest.raises(UploadRejected, match="empty"):
        validate_content(filename="empty.png", content=b"")


def test_an_image_smaller_than_the_minimum_side_is_refused_saying_so(make_png):
    with pytest.raises(UploadRejected) as excinfo:
        validate_content(filename="dot.png", content=make_png(200, 31))
    assert "200x31 pixels" in str(excinfo.value)
    assert "smaller than the minimum of 32 pixels" in str(excinfo.value)


def test_an_image_too_long_for_its_width_is_refused_saying_so(make_png):
    with pytest.raises(UploadRejected) as excinfo:
        validate_content(filename="strip.png", content=make_png(40, 401))
    assert "aspect ratio of 10.0:1, beyond the limit of 10:1" in str(excinfo.value)
    validate_content(filename="tall.png", content=make_png(40, 400))


def test_the_shape_limits_come_from_the_settings(make_png, settings):
    settings.UPLOAD_MIN_SIDE = 100
    settings.UPLOAD_MAX_ASPECT_RATIO = 1.5
    with pytest.raises(UploadRejected, match="minimum of 100 pixels"):
        validate_content(filename="a.png", content=make_png(120, 99))
    with pytest.raises(UploadRejected, match="limit of 1.5:1"):
        validate_content(filename="b.png", content=make_png(160, 100))
    validate_content(filename="c.png", content=make_png(150, 100))
