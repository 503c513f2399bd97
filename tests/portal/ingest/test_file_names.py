"""Issue 18, finding 6: bidirectional control characters in uploaded file names are
removed before a name is stored, so "\u202egnp.exe" cannot pass itself off as
"exe.png" on the study page, the upload report, the API or the PDF report."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from rest_framework.test import APIClient

from portal.accounts.tokens import token_issue
from portal.clinical.models import Scan
from portal.ingest.models import UploadItem
from tests.portal.ingest.factories import png, zip_of

pytestmark = pytest.mark.django_db

BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"


def _no_controls(text: str) -> bool:
    return not any(char in BIDI or ord(char) < 32 for char in text)


def test_bidi_controls_are_stripped_from_stored_and_shown_names(
    client, user, study, media_root, enqueued
):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token_issue(user=user)[1]}")
    response = api.post(
        f"/api/v1/studies/{study.pk}/scans/",
        {
            "files": [
                SimpleUploadedFile("\u202egnp.exe", png()),
                SimpleUploadedFile("notes\u2066\u202e.txt\u2069", b"not an image"),
                SimpleUploadedFile(
                    "ex\u202eam.zip", zip_of([("in\u202eside.png", png(value=77))])
                ),
            ]
        },
        format="multipart",
    )

    assert response.status_code == 201, response.content
    scan_names = sorted(Scan.objects.values_list("original_filename", flat=True))
    assert "gnp.exe" in scan_names
    assert all(_no_controls(name) for name in scan_names)
    items = UploadItem.objects.all()
    assert items.count() == 3
    for item in items:
        assert _no_controls(item.filename) and _no_controls(item.archive), item
    body = response.content.decode()
    assert "\\u202e" not in body.lower() and "\u202e" not in body
    client.force_login(user)
    page = client.get(reverse("clinical:study_detail", args=[study.pk]))
    assert "gnp.exe" in page.text
    assert "\u202e" not in page.text and "&#8238;" not in page.text
