from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from portal.clinical.uploads import UploadRejected, validate_upload


def test_a_real_png_is_accepted(make_png):
    upload = validate_upload(SimpleUploadedFile("scan.png", make_png(48, 36)))
    assert (upload.width, upload.height) == (48, 36)
    assert upload.original_filename == "scan.png"


def test_text_renamed_png_is_rejected_with_a_reason():
    with pytest.raises(UploadRejected, match="not a recognised image"):
        validate_upload(SimpleUploadedFile("notes.png", b"these are not pixels\n" * 10))


def test_truncated_png_is_rejected(make_png):
    content = make_png(200, 200)
    with pytest.raises(UploadRejected) as excinfo:
        validate_upload(SimpleUploadedFile("cut.png", content[: len(content) // 2]))
    assert str(excinfo.value)


def test_pixel_limit_is_enforced(make_png):
    with pytest.raises(UploadRejected, match="over the limit"):
        validate_upload(
            SimpleUploadedFile("big.png", make_png(100, 100)), max_pixels=5000
        )


def test_size_limit_is_enforced(make_png):
    with pytest.raises(UploadRejected, match="larger than"):
        validate_upload(SimpleUploadedFile("big.png", make_png(100, 100)), max_bytes=10)


def test_empty_file_is_rejected():
    with pytest.raises(UploadRejected, match="empty"):
        validate_upload(SimpleUploadedFile("empty.png", b""))


def test_an_image_smaller_than_the_minimum_side_is_refused_saying_so(make_png):
    with pytest.raises(UploadRejected) as excinfo:
        validate_upload(SimpleUploadedFile("dot.png", make_png(200, 31)))
    assert "200x31 pixels" in str(excinfo.value)
    assert "smaller than the minimum of 32 pixels" in str(excinfo.value)


def test_an_image_too_long_for_its_width_is_refused_saying_so(make_png):
    with pytest.raises(UploadRejected) as excinfo:
        validate_upload(SimpleUploadedFile("strip.png", make_png(40, 401)))
    assert "aspect ratio of 10.0:1, beyond the limit of 10:1" in str(excinfo.value)
    validate_upload(SimpleUploadedFile("tall.png", make_png(40, 400)))


def test_the_shape_limits_come_from_the_settings(make_png, settings):
    settings.UPLOAD_MIN_SIDE = 100
    settings.UPLOAD_MAX_ASPECT_RATIO = 1.5
    with pytest.raises(UploadRejected, match="minimum of 100 pixels"):
        validate_upload(SimpleUploadedFile("a.png", make_png(120, 99)))
    with pytest.raises(UploadRejected, match="limit of 1.5:1"):
        validate_upload(SimpleUploadedFile("b.png", make_png(160, 100)))
    validate_upload(SimpleUploadedFile("c.png", make_png(150, 100)))
