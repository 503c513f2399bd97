from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from portal.analyses.models import Analysis
from portal.clinical.models import Patient, Scan

pytestmark = pytest.mark.django_db


def _files(*pairs: tuple[str, bytes]) -> list[SimpleUploadedFile]:
    return [SimpleUploadedFile(name, content) for name, content in pairs]


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("clinical:patient_list", {}),
        ("clinical:patient_detail", {"pk": 1}),
        ("clinical:study_detail", {"pk": 1}),
        ("clinical:study_status", {"pk": 1}),
        ("clinical:scan_original", {"pk": 1}),
        ("analyses:artifact", {"pk": 1, "kind": "overlay"}),
    ],
)
def test_pages_redirect_anonymous_users_to_login(client, name, kwargs):
    response = client.get(reverse(name, kwargs=kwargs))
    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


def test_upload_and_retry_need_login(client, study):
    assert (
        client.post(reverse("clinical:study_upload", args=[study.pk])).status_code
        == 302
    )
    assert client.post(reverse("analyses:retry", args=[1])).status_code == 302
    assert not Scan.objects.exists()


def test_login_page_is_public(client):
    assert client.get(reverse("login")).status_code == 200


def test_patient_is_created_from_the_list_page(logged_in_client):
    response = logged_in_client.post(
        reverse("clinical:patient_list"),
        {"identifier": "H-9", "name": "Ann", "birth_date": ""},
    )
    patient = Patient.objects.get(identifier="H-9")
    assert response.status_code == 302 and response.url == patient.get_absolute_url()
    listing = logged_in_client.get(reverse("clinical:patient_list"), {"q": "H-9"})
    assert b"Ann" in listing.content


def test_the_patient_list_is_paged_with_each_patients_study_count(
    logged_in_client, user
):
    from portal.clinical.services import patient_create, study_create

    for number in range(60):
        patient = patient_create(identifier=f"P-{number:03d}", name=f"Person {number}")
        for _ in range(number % 3):
            study_create(patient=patient, created_by=user)
    url = reverse("clinical:patient_list")
    first = logged_in_client.get(url).context["page"]
    assert first.paginator.count == 60
    assert [p.identifier for p in first.object_list][:2] == ["P-000", "P-001"]
    assert [p.study_count for p in first.object_list][:3] == [0, 1, 2]
    second = logged_in_client.get(url, {"page": 2})
    assert [p.identifier for p in second.context["page"].object_list] == [
        f"P-{number:03d}" for number in range(50, 60)
    ]
    assert "Previous" in second.content.decode()
    searched = logged_in_client.get(url, {"q": "Person 1"})
    assert searched.context["page"].paginator.count == 11
    assert "page=" not in searched.content.decode()  # one page: no links


def test_study_is_created_from_the_patient_page(logged_in_client, patient, user):
    response = logged_in_client.post(
        reverse("clinical:patient_detail", args=[patient.pk]),
        {"accession_number": "A-77", "study_date": "2026-01-02", "description": "left"},
    )
    study = patient.studies.get()
    assert response.url == study.get_absolute_url()
    assert study.created_by == user


def test_upload_accepts_good_files_and_names_the_rejected_ones(
    logged_in_client, study, make_png, settings
):
    settings.UPLOAD_MAX_PIXELS = 100 * 100
    good = make_png(40, 32)
    files = _files(
        ("one.png", good),
        ("notes.png", b"plain text, not an image\n"),
        ("cut.png", make_png(90, 90)[:60]),
        ("huge.png", make_png(200, 200)),
        ("two.png", make_png(50, 36)),
    )
    response = logged_in_client.post(
        reverse("clinical:study_upload", args=[study.pk]),
        {"files": files},
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 200
    body = response.json()
    assert [a["filename"] for a in body["accepted"]] == ["one.png", "two.png"]
    reasons = {r["filename"]: r["reason"] for r in body["rejected"]}
    assert set(reasons) == {"notes.png", "cut.png", "huge.png"}
    assert "not a recognised image" in reasons["notes.png"]
    assert "over the limit" in reasons["huge.png"]
    assert reasons["cut.png"]
    assert Analysis.objects.filter(scan__study=study, status="queued").count() == 2


def test_html_upload_shows_rejections_on_the_study_page(
    logged_in_client, study, make_png
):
    response = logged_in_client.post(
        reverse("clinical:study_upload", args=[study.pk]),
        {"files": _files(("ok.png", make_png()), ("bad.png", b"nope"))},
        follow=True,
    )
    page = response.content.decode()
    assert "bad.png" in page and "not a recognised image" in page
    assert "ok.png" in page
    # Shown once, not on every later visit.
    again = logged_in_client.get(reverse("clinical:study_detail", args=[study.pk]))
    assert "bad.png" not in again.content.decode()


def test_upload_without_a_model_is_refused_clearly(
    logged_in_client, study, make_png, weights_dir
):
    (weights_dir / "model.json").unlink()
    response = logged_in_client.post(
        reverse("clinical:study_upload", args=[study.pk]),
        {"files": _files(("ok.png", make_png()))},
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 503
    assert "model.json" in response.json()["error"]
    assert not Scan.objects.exists()


def test_status_endpoint_lists_scans_with_their_analysis(
    logged_in_client, study, make_png
):
    logged_in_client.post(
        reverse("clinical:study_upload", args=[study.pk]),
        {"files": _files(("ok.png", make_png()))},
    )
    body = logged_in_client.get(
        reverse("clinical:study_status", args=[study.pk])
    ).json()
    (entry,) = body["scans"]
    assert entry["filename"] == "ok.png"
    assert entry["analysis"]["status"] == "queued"
    assert entry["analysis"]["artifacts"] == {}


def test_original_is_streamed_to_logged_in_users_only(
    logged_in_client, client, study, make_png
):
    content = make_png(43, 32)
    logged_in_client.post(
        reverse("clinical:study_upload", args=[study.pk]),
        {"files": _files(("Jane Example.png", content))},
    )
    scan = Scan.objects.get()
    url = reverse("clinical:scan_original", args=[scan.pk])
    response = logged_in_client.get(url)
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == content
    assert response["Content-Type"] == "image/png"
    assert "Jane" not in response["Content-Disposition"]
    client.logout()
    assert client.get(url).status_code == 302


def test_media_is_not_served_by_url(logged_in_client, settings):
    assert not settings.MEDIA_URL or settings.MEDIA_URL == "/"
    assert logged_in_client.get("/media/scans/1/x.png").status_code == 404


def test_the_study_page_names_a_dicom_scans_scanner(logged_in_client, study):
    from pydicom.uid import generate_uid

    from tests.portal.ingest.factories import GREY, dicom

    uid = generate_uid()
    logged_in_client.post(
        reverse("clinical:study_upload", args=[study.pk]),
        {
            "files": _files(
                (
                    "a.dcm",
                    dicom(
                        GREY,
                        study_uid=uid,
                        patient_id=study.patient.identifier,
                        manufacturer="Acme Medical",
                        model_name="Sono 7",
                    ),
                ),
            )
        },
    )
    scan = Scan.objects.get(study=study)
    page = logged_in_client.get(reverse("clinical:study_detail", args=[study.pk]))
    assert 'class="scanner"' in page.content.decode()
    assert "Acme Medical Sono 7" in page.content.decode()
    review = logged_in_client.get(reverse("review:scan_review", args=[scan.pk]))
    assert "Scanner: Acme Medical Sono 7" in review.content.decode()
