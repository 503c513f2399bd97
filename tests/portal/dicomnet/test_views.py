"""Downloading the DICOM objects: review page links, portal and API, checked and audited."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import pydicom
import pytest
from django.urls import reverse
from pydicom.uid import generate_uid

from portal.accounts.tokens import token_issue
from portal.audit.models import AccessRecord
from tests.portal.dicomnet.conftest import finish_analysis, store_scan
from tests.portal.ingest.factories import GREY, dicom, png


@pytest.fixture
def analysis(study: Any, user: Any) -> Any:
    return finish_analysis(
        store_scan(study, user, dicom(GREY, study_uid=generate_uid()))
    )


def test_the_review_page_links_the_dicom_objects(
    client: Any, make_user: Any, analysis: Any
) -> None:
    client.force_login(make_user("radiologist"))
    page = client.get(reverse("review:scan_review", args=[analysis.scan_id]))
    assert page.status_code == 200
    for kind in ("seg", "sr", "overlay", "zip"):
        assert reverse("dicomnet:analysis_dicom", args=[analysis.pk, kind]) in (
            page.content.decode()
        )


@pytest.mark.parametrize("kind", ["seg", "sr", "overlay"])
def test_a_radiologist_downloads_each_object_and_it_is_audited(
    client: Any, make_user: Any, analysis: Any, kind: str
) -> None:
    client.force_login(make_user("radiologist"))
    response = client.get(reverse("dicomnet:analysis_dicom", args=[analysis.pk, kind]))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/dicom"
    assert response["Content-Disposition"] == (
        f'attachment; filename="analysis-{analysis.pk}-{kind}.dcm"'
    )
    dataset = pydicom.dcmread(io.BytesIO(response.content))
    assert dataset.PatientID == "H-0001"
    record = AccessRecord.objects.get(action=AccessRecord.Action.DOWNLOAD)
    assert (record.object_id, record.detail) == (str(analysis.pk), f"dicom {kind}")


def test_the_zip_holds_every_object_and_a_png_scan_its_source(
    client: Any, make_user: Any, study: Any, user: Any
) -> None:
    analysis = finish_analysis(store_scan(study, user, png(64, 48), name="a.png"))
    client.force_login(make_user("radiologist"))
    response = client.get(reverse("dicomnet:analysis_dicom", args=[analysis.pk, "zip"]))
    assert response.status_code == 200
    names = zipfile.ZipFile(io.BytesIO(response.content)).namelist()
    assert sorted(names) == sorted(
        f"analysis-{analysis.pk}-{kind}.dcm"
        for kind in ("seg", "sr", "overlay", "source")
    )


def test_no_role_no_download(client: Any, make_user: Any, analysis: Any) -> None:
    url = reverse("dicomnet:analysis_dicom", args=[analysis.pk, "sr"])
    assert client.get(url).status_code == 302  # anonymous: to the login page
    client.force_login(make_user(None))
    assert client.get(url).status_code == 403
    assert not AccessRecord.objects.filter(action=AccessRecord.Action.DOWNLOAD).exists()


def test_unfinished_analyses_and_unknown_kinds_are_not_found(
    client: Any, make_user: Any, study: Any, user: Any, analysis: Any
) -> None:
    client.force_login(make_user("radiologist"))
    queued = store_scan(study, user, dicom(GREY[::-1].copy())).analyses.get()
    url = reverse("dicomnet:analysis_dicom", args=[queued.pk, "seg"])
    assert client.get(url).status_code == 404
    url = reverse("dicomnet:analysis_dicom", args=[analysis.pk, "pdf"])
    assert client.get(url).status_code == 404
    # A DICOM scan is its own source.
    url = reverse("dicomnet:analysis_dicom", args=[analysis.pk, "source"])
    assert client.get(url).status_code == 404


def test_the_api_serves_the_objects_to_a_token(
    client: Any, make_user: Any, analysis: Any
) -> None:
    reader = make_user("radiologist")
    _, token = token_issue(user=reader)
    url = reverse("api:analysis-dicom", args=[analysis.pk, "seg"])
    response = client.get(url, HTTP_AUTHORIZATION=f"Token {token}")
    assert response.status_code == 200
    assert pydicom.dcmread(io.BytesIO(b"".join(response))).Modality == "SEG"
    assert AccessRecord.objects.filter(
        action=AccessRecord.Action.DOWNLOAD, detail="dicom seg"
    ).exists()
    _, nobody = token_issue(user=make_user(None))
    assert client.get(url, HTTP_AUTHORIZATION=f"Token {nobody}").status_code == 403
    missing = client.get(
        reverse("api:analysis-dicom", args=[analysis.pk, "nope"]),
        HTTP_AUTHORIZATION=f"Token {token}",
    )
    assert missing.status_code == 404
    assert "error" in missing.json()
