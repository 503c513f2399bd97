from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from portal.clinical.uploads import UploadRejected, validate_upload


def test_a_real_png_is_accepted(make_png):
    upload = validate_upload(SimpleUploadedFile("scan.png", make_png(30, 20)))
    assert (upload.image.width, upload.image.height) == (30, 20)
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
