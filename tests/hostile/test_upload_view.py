"""The hostile corpus through the browser upload (the study page's form)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from portal.clinical.models import Scan
from tests.hostile.checks import check_outcome, check_storage
from tests.hostile.corpus import ACCEPT, build, good_png

pytestmark = pytest.mark.django_db
CORPUS = build()


def _upload(client: Any, study: Any, files: list[tuple[str, bytes]], **headers: Any):
    return client.post(
        reverse("clinical:study_upload", args=[study.pk]),
        {"files": [SimpleUploadedFile(name, content) for name, content in files]},
        **headers,
    )


def test_the_corpus_is_big_and_covers_every_kind_the_issue_names():
    assert len(CORPUS) >= 30
    kinds = " ".join(item.kind for item in CORPUS)
    for needed in (
        "empty",
        "truncated",
        "named",
        "polyglot",
        "bomb",
        "16-bit",
        "cmyk",
        "palette",
        "animated",
        "1x1",
        "wide",
        "zip-bomb",
        "zip-dot-dot",
        "symlink",
        "dicom-no-pixels",
        "dicom-broken-header",
        "long-name",
        "non-ascii",
    ):
        assert needed in kinds, needed


@pytest.mark.parametrize("item", CORPUS, ids=lambda item: item.kind)
def test_each_file_is_accepted_or_refused_with_a_specific_reason(
    item, uploader, study, media_root
):
    response = _upload(
        uploader, study, [(item.filename, item.content)], HTTP_ACCEPT="application/json"
    )

    assert response.status_code in (200, 400), response.content[:500]
    body = response.json()
    accepted = [entry["filename"] for entry in body["accepted"]]
    reasons = [entry["reason"] for entry in body["rejected"]]
    check_outcome(item, accepted, reasons)
    if item.expect == ACCEPT:
        scan = Scan.objects.get(pk=body["accepted"][0]["scan_id"])
        assert len(scan.original_filename) <= 255
        assert "/" not in scan.original_filename
    check_storage(media_root)


@pytest.mark.parametrize("item", CORPUS, ids=lambda item: item.kind)
def test_the_form_post_redirects_and_the_page_shows_the_outcome_safely(
    item, uploader, study
):
    response = _upload(uploader, study, [(item.filename, item.content)])

    assert response.status_code == 302
    page = uploader.get(response["Location"])
    assert page.status_code == 200
    assert b"<script>alert(1)</script>" not in page.content
    assert b"<img src=x onerror" not in page.content
    if item.kind == "html-name":
        assert html.escape(item.filename) in page.text


def test_good_files_sent_with_the_whole_corpus_still_go_through(
    uploader, study, media_root, enqueued, django_capture_on_commit_callbacks
):
    # Sizes no corpus item has: identical files are refused as duplicates.
    good = [("good-one.png", good_png(131, 97)), ("good-two.png", good_png(120, 91))]
    files = [(item.filename, item.content) for item in CORPUS] + good

    with django_capture_on_commit_callbacks(execute=True):
        response = _upload(uploader, study, files, HTTP_ACCEPT="application/json")

    assert response.status_code == 200
    body = response.json()
    accepted = {entry["filename"] for entry in body["accepted"]}
    assert {"good-one.png", "good-two.png"} <= accepted
    # Several corpus items share content; the portal refuses repeats as duplicates.
    expected_accepted = len({item.content for item in CORPUS if item.expect == ACCEPT})
    assert len(body["accepted"]) >= expected_accepted + 2
    assert len(enqueued) == len(body["accepted"])
    check_storage(media_root)


def test_an_upload_served_back_is_never_sniffed_into_html(uploader, study):
    polyglot = next(item for item in CORPUS if item.kind == "png-html-polyglot")
    body = _upload(
        uploader,
        study,
        [(polyglot.filename, polyglot.content)],
        HTTP_ACCEPT="application/json",
    ).json()
    scan_id = body["accepted"][0]["scan_id"]

    response = uploader.get(reverse("clinical:scan_original", args=[scan_id]))

    assert response["Content-Type"] == "image/png"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in response["Content-Security-Policy"] or (
        "default-src 'self'" in response["Content-Security-Policy"]
    )


def test_nothing_lands_outside_storage(media_root: Path):
    assert not Path("/tmp/pwned.png").exists()
