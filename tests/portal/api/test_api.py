"""REST API v1: every endpoint, its permissions and its errors."""

from __future__ import annotations

import hashlib
import io
from datetime import timedelta
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone
from knox.models import AuthToken
from PIL import Image

from portal.analyses.models import Analysis
from portal.audit.models import AccessRecord
from portal.clinical.models import Patient, Scan, Study
from portal.clinical.services import patient_create, study_create
from portal.ingest.models import UploadBatch
from tests.portal.ingest.factories import dicom, png, zip_of
from tests.portal.review.conftest import FLAGGED, analysed_scan

pytestmark = pytest.mark.django_db

PASSWORD = "a-long-test-password-1"


def files(*pairs: tuple[str, bytes]) -> dict[str, Any]:
    return {"files": [SimpleUploadedFile(name, content) for name, content in pairs]}


# --- tokens ---------------------------------------------------------------------------


def test_a_token_is_exchanged_for_username_and_password(api, make_user):
    make_user("staff", "nurse")
    response = api.post(
        "/api/v1/auth/token/", {"username": "nurse", "password": PASSWORD}
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"token", "expiry"}
    api.credentials(HTTP_AUTHORIZATION=f"Token {body['token']}")
    assert api.get("/api/v1/patients/").status_code == 200
    # Each call issues a token of its own; both work until revoked or expired.
    api.credentials()
    again = api.post("/api/v1/auth/token/", {"username": "nurse", "password": PASSWORD})
    assert again.json()["token"] != body["token"]


def test_tokens_are_stored_as_digests_and_never_shown_to_superusers(
    api, client, make_user, django_user_model
):
    make_user("staff", "nurse")
    key = api.post(
        "/api/v1/auth/token/", {"username": "nurse", "password": PASSWORD}
    ).json()["token"]
    stored = AuthToken.objects.get(user__username="nurse")
    assert key not in {stored.digest, stored.token_key}
    assert stored.digest == hashlib.sha512(key.encode()).hexdigest()
    root = django_user_model.objects.create_superuser("root", "", PASSWORD)
    client.force_login(root)
    listing = client.get(reverse("admin:knox_authtoken_changelist"))
    change = client.get(
        reverse("admin:knox_authtoken_change", args=[stored.pk]), follow=True
    )
    assert listing.status_code == 200
    for page in (listing, change):
        assert key not in page.text
        assert key[:15] not in page.text  # not even the part knox keeps to look it up
    # Nobody mints a token in the admin (it would be shown there once, in clear).
    assert client.get(reverse("admin:knox_authtoken_add")).status_code == 403


def test_a_token_expires(api, make_user, settings):
    make_user("staff", "nurse")
    key = api.post(
        "/api/v1/auth/token/", {"username": "nurse", "password": PASSWORD}
    ).json()["token"]
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert api.get("/api/v1/patients/").status_code == 200
    AuthToken.objects.filter(user__username="nurse").update(
        expiry=timezone.now() - timedelta(seconds=1)
    )

    response = api.get("/api/v1/patients/")

    assert response.status_code == 401
    assert not AuthToken.objects.filter(user__username="nurse").exists()


def test_a_password_change_or_deactivation_revokes_every_token(api, make_user):
    nurse = make_user("staff", "nurse")
    keys = [
        api.post(
            "/api/v1/auth/token/", {"username": "nurse", "password": PASSWORD}
        ).json()["token"]
        for _ in range(2)
    ]
    nurse.set_password("another-long-passphrase-77")
    nurse.save()
    for key in keys:
        api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
        assert api.get("/api/v1/patients/").status_code == 401

    api.credentials()
    key = api.post(
        "/api/v1/auth/token/",
        {"username": "nurse", "password": "another-long-passphrase-77"},
    ).json()["token"]
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert api.get("/api/v1/patients/").status_code == 200
    nurse.refresh_from_db()
    nurse.is_active = False
    nurse.save()
    assert not AuthToken.objects.filter(user=nurse).exists()
    assert api.get("/api/v1/patients/").status_code == 401


def test_wrong_credentials_get_a_json_error_that_says_what_to_do(api, make_user):
    make_user("staff", "nurse")
    response = api.post("/api/v1/auth/token/", {"username": "nurse", "password": "x"})
    assert response.status_code == 401
    body = response.json()
    assert "Wrong username or password" in body["error"]
    assert body["code"] == "authentication_failed"
    missing = api.post("/api/v1/auth/token/", {"username": "nurse"})
    assert missing.status_code == 400
    assert missing.json()["fields"] == {"password": ["This field is required."]}
    assert "password: This field is required." in missing.json()["error"]


def test_a_revoked_token_stops_working(staff_api):
    assert staff_api.get("/api/v1/patients/").status_code == 200
    assert staff_api.delete("/api/v1/auth/token/revoke/").status_code == 204
    response = staff_api.get("/api/v1/patients/")
    assert response.status_code == 401
    assert "Invalid token" in response.json()["error"]


def test_anonymous_calls_are_told_how_to_authenticate(api):
    response = api.get("/api/v1/studies/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    assert "Authorization: Token" in response.json()["error"]


def test_session_login_works_too_for_the_browsable_api(client, user):
    client.force_login(user)
    response = client.get("/api/v1/patients/", headers={"Accept": "text/html"})
    assert response.status_code == 200
    assert b"Patient" in response.content


# --- permissions matrix ---------------------------------------------------------------

STAFF_ONLY = "staff"
READERS = "readers"


@pytest.fixture
def world(user):
    patient = patient_create(identifier="H-1", name="Ann Example")
    study = study_create(patient=patient, created_by=user, accession_number="A1")
    scan = analysed_scan(study, user)
    analysis = scan.analyses.get()
    failed = analysed_scan(study, user, filename="other.png")
    Scan.objects.filter(pk=failed.pk).update(sha256="1" * 64)
    failed_analysis = failed.analyses.get()
    Analysis.objects.filter(pk=failed_analysis.pk).update(
        status=Analysis.Status.FAILED, error="boom"
    )
    batch = UploadBatch.objects.create(study=study, source="api", created_by=user)
    return {
        "patient": patient,
        "study": study,
        "scan": scan,
        "analysis": analysis,
        "failed": failed_analysis,
        "batch": batch,
    }


def endpoints(w: dict[str, Any]) -> list[tuple[str, str, Any, str, int]]:
    """(method, url, data, who may, success status)."""
    return [
        ("get", "/api/v1/patients/", None, READERS, 200),
        ("get", f"/api/v1/patients/{w['patient'].pk}/", None, READERS, 200),
        (
            "post",
            "/api/v1/patients/",
            {"identifier": "NEW-1", "name": "New Patient"},
            STAFF_ONLY,
            201,
        ),
        ("get", "/api/v1/studies/", None, READERS, 200),
        ("get", f"/api/v1/studies/{w['study'].pk}/", None, READERS, 200),
        ("post", "/api/v1/studies/", {"patient": "H-1"}, STAFF_ONLY, 201),
        (
            "post",
            f"/api/v1/studies/{w['study'].pk}/scans/",
            "upload",
            STAFF_ONLY,
            201,
        ),
        ("get", f"/api/v1/batches/{w['batch'].pk}/", None, READERS, 200),
        ("get", f"/api/v1/analyses/{w['analysis'].pk}/", None, READERS, 200),
        ("post", f"/api/v1/analyses/{w['failed'].pk}/retry/", None, STAFF_ONLY, 200),
        ("get", f"/api/v1/scans/{w['scan'].pk}/original/", None, READERS, 200),
        (
            "get",
            f"/api/v1/analyses/{w['analysis'].pk}/artifacts/overlay/",
            None,
            READERS,
            200,
        ),
    ]


@pytest.mark.parametrize("role", [None, "staff", "radiologist", "administrator"])
def test_every_endpoint_allows_exactly_the_portals_roles(world, as_role, api, role):
    client = as_role(role)
    for method, url, data, who, success in endpoints(world):
        cache_clear()
        if data == "upload":
            response = client.post(
                url, files(("p.png", png(value=hash(role) % 200))), format="multipart"
            )
        else:
            response = getattr(client, method)(url, data)
        allowed = role is not None and (who == READERS or role == "staff")
        expected = success if allowed else 403
        assert response.status_code == expected, (
            role,
            method,
            url,
            response.content[:300],
        )
        if not allowed:
            assert "role does not allow this" in response.json()["error"]
        anonymous = getattr(api, method)(url, data if data != "upload" else None)
        assert anonymous.status_code == 401, (method, url)


def cache_clear() -> None:
    from django.core.cache import cache

    cache.clear()


# --- patients -------------------------------------------------------------------------


def test_patients_are_created_and_searched_by_identifier_or_name(staff_api):
    created = staff_api.post(
        "/api/v1/patients/",
        {"identifier": " H-77 ", "name": "Maria Example", "birth_date": "1971-02-03"},
    )
    assert created.status_code == 201
    body = created.json()
    assert (body["identifier"], body["birth_date"]) == ("H-77", "1971-02-03")
    patient_create(identifier="H-78", name="Other Person")
    by_name = staff_api.get("/api/v1/patients/", {"search": "maria"}).json()
    assert [p["identifier"] for p in by_name["results"]] == ["H-77"]
    by_id = staff_api.get("/api/v1/patients/", {"search": "H-7"}).json()
    assert [p["identifier"] for p in by_id["results"]] == ["H-77", "H-78"]
    assert by_id["next"] is None


def test_lists_are_walked_by_keyset_without_counting_the_table(staff_api, user):
    import datetime

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from portal.clinical.models import Patient

    patients = Patient.objects.bulk_create(
        Patient(identifier=f"K-{i:02d}", name=f"Keyset {i}") for i in range(7)
    )
    day = datetime.date(2025, 3, 1)
    # Several studies share a date: the cursor must carry the id too.
    made = [
        study_create(
            patient=patients[i],
            created_by=user,
            study_date=day - datetime.timedelta(days=i // 3),
        )
        for i in range(7)
    ]
    expected = [
        s.pk for s in sorted(made, key=lambda s: (s.study_date, s.pk), reverse=True)
    ]
    seen: list[int] = []
    url = "/api/v1/studies/?page_size=3"
    pages = 0
    while url:
        with CaptureQueriesContext(connection) as queries:
            body = staff_api.get(url).json()
        # QuerySet.count(), as a page-number paginator runs it on every page.
        assert not any('"__count"' in q["sql"] for q in queries.captured_queries)
        seen.extend(s["id"] for s in body["results"])
        url, pages = body["next"], pages + 1
        assert "count" not in body and pages <= 3
    assert seen == expected
    identifiers = []
    url = "/api/v1/patients/?page_size=2&search=K-"
    while url:
        body = staff_api.get(url).json()
        identifiers.extend(p["identifier"] for p in body["results"])
        url = body["next"]
    assert identifiers == [f"K-{i:02d}" for i in range(7)]
    bad = staff_api.get("/api/v1/studies/", {"cursor": "not-a-cursor"})
    assert bad.status_code == 400 and "cursor" in bad.json()["fields"]


def test_a_duplicate_identifier_and_a_bad_date_are_explained(staff_api):
    patient_create(identifier="H-5", name="A")
    response = staff_api.post(
        "/api/v1/patients/", {"identifier": "H-5", "name": "B", "birth_date": "5/5/70"}
    )
    assert response.status_code == 400
    fields = response.json()["fields"]
    assert "already exists" in fields["identifier"][0]
    assert "birth_date" in fields
    assert "identifier:" in response.json()["error"]


def test_an_unknown_patient_is_a_json_404(staff_api):
    response = staff_api.get("/api/v1/patients/999/")
    assert response.status_code == 404
    assert response.json()["error"] == "No patient with id 999, or it was deleted."


# --- studies --------------------------------------------------------------------------


def test_a_study_is_created_for_a_patient_named_by_identifier(staff_api):
    patient_create(identifier="H-9", name="P")
    response = staff_api.post(
        "/api/v1/studies/",
        {"patient": "H-9", "accession_number": "ACC-1", "description": "left"},
    )
    assert response.status_code == 201
    body = response.json()
    study = Study.objects.get(pk=body["id"])
    assert (study.patient.identifier, study.accession_number) == ("H-9", "ACC-1")
    assert study.created_by == staff_api.user
    assert body["patient"]["identifier"] == "H-9" and body["scan_count"] == 0


def test_a_study_for_an_unknown_patient_says_to_create_the_patient(staff_api):
    response = staff_api.post("/api/v1/studies/", {"patient": "NOPE"})
    assert response.status_code == 400
    assert "POST /api/v1/patients/" in response.json()["fields"]["patient"][0]


def test_studies_are_filtered_as_in_the_dashboard(staff_api, user):
    ann = patient_create(identifier="H-1", name="Ann")
    bob = patient_create(identifier="H-2", name="Bob")
    malignant = study_create(patient=ann, created_by=user, accession_number="X1")
    analysed_scan(malignant, user)
    benign = study_create(patient=bob, created_by=user, accession_number="X2")
    scan = analysed_scan(
        benign, user, probabilities={"normal": 0.1, "benign": 0.85, "malignant": 0.05}
    )
    Scan.objects.filter(pk=scan.pk).update(sha256="2" * 64)
    empty = study_create(patient=bob, created_by=user, accession_number="X3")

    def ids(**params: Any) -> set[int]:
        response = staff_api.get("/api/v1/studies/", params)
        assert response.status_code == 200, response.content
        return {s["id"] for s in response.json()["results"]}

    assert ids() == {malignant.pk, benign.pk, empty.pk}
    listed = staff_api.get("/api/v1/studies/").json()["results"]
    assert {s["id"]: s["scan_count"] for s in listed} == {
        malignant.pk: 1,
        benign.pk: 1,
        empty.pk: 0,
    }
    assert ids(label="malignant") == {malignant.pk}
    assert ids(confidence_min=80) == {benign.pk}
    assert ids(patient="H-2") == {benign.pk, empty.pk}
    assert ids(search="ann") == {malignant.pk}
    assert ids(q="X3") == {empty.pk}
    assert ids(status="succeeded", review="unreviewed") == {malignant.pk, benign.pk}
    bad = staff_api.get("/api/v1/studies/", {"label": "cancer", "date_from": "soon"})
    assert bad.status_code == 400
    assert set(bad.json()["fields"]) == {"label", "date_from"}


def test_study_detail_has_scans_with_their_latest_analysis_and_is_audited(
    staff_api, study, user
):
    scan = analysed_scan(study, user)
    response = staff_api.get(f"/api/v1/studies/{study.pk}/")
    assert response.status_code == 200
    body = response.json()
    (entry,) = body["scans"]
    assert entry["id"] == scan.pk and entry["filename"] == "scan.png"
    assert entry["original_url"].endswith(f"/api/v1/scans/{scan.pk}/original/")
    latest = entry["latest_analysis"]
    assert latest["status"] == "succeeded" and latest["label"] == "malignant"
    record = AccessRecord.objects.get(action="view", object_id=str(study.pk))
    assert record.user == staff_api.user


# --- uploads --------------------------------------------------------------------------


def test_upload_reports_accepted_duplicates_and_rejected_files(
    staff_api, study, django_capture_on_commit_callbacks, enqueued
):
    staff_api.post(
        f"/api/v1/studies/{study.pk}/scans/",
        files(("old.png", png(value=1))),
        format="multipart",
    )
    archive = zip_of(
        [
            ("dir/new.png", png(value=2)),
            ("dir/bad.png", b"no"),
            ("dir/sub/x.dcm", dicom()),
        ]
    )
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_api.post(
            f"/api/v1/studies/{study.pk}/scans/",
            files(("again.png", png(value=1)), ("exam.zip", archive)),
            format="multipart",
        )
    assert response.status_code == 201, response.content
    body = response.json()
    accepted = {a["filename"]: a for a in body["accepted"]}
    assert set(accepted) == {"dir/new.png", "dir/sub/x.dcm"}
    new = accepted["dir/new.png"]
    assert new["status"] == "queued" and new["archive"] == "exam.zip"
    assert Analysis.objects.get(pk=new["analysis"]).scan_id == new["scan"]
    (duplicate,) = body["duplicates"]
    assert duplicate["filename"] == "again.png"
    assert duplicate["scan"] == Scan.objects.get(original_filename="old.png").pk
    (rejected,) = body["rejected"]
    assert (
        rejected["filename"] == "dir/bad.png"
        and "not a recognised image" in rejected["error"]
    )
    assert sorted(a for a, _ in enqueued) == sorted(
        a["analysis"] for a in accepted.values()
    )
    progress = staff_api.get(body["progress_url"]).json()
    assert progress["images"] == 3 and len(progress["rejected"]) == 1


def test_upload_status_codes_say_what_happened(staff_api, study):
    url = f"/api/v1/studies/{study.pk}/scans/"
    staff_api.post(url, files(("a.png", png(value=3))), format="multipart")
    only_duplicates = staff_api.post(
        url, files(("a.png", png(value=3))), format="multipart"
    )
    assert only_duplicates.status_code == 200
    all_bad = staff_api.post(url, files(("a.txt", b"text")), format="multipart")
    assert all_bad.status_code == 422
    assert "No file was accepted" in all_bad.json()["error"]
    assert all_bad.json()["rejected"][0]["filename"] == "a.txt"


def test_upload_errors_are_actionable(staff_api, study, weights_dir):
    url = f"/api/v1/studies/{study.pk}/scans/"
    wrong_field = staff_api.post(
        url, {"file": SimpleUploadedFile("a.png", png())}, format="multipart"
    )
    assert wrong_field.status_code == 400
    assert "field 'files' (the request has file instead)" in wrong_field.json()["error"]
    as_json = staff_api.post(url, {"files": "a.png"}, format="json")
    assert as_json.status_code == 415
    assert "multipart/form-data" in as_json.json()["error"]
    missing = staff_api.post(
        "/api/v1/studies/999/scans/", files(("a.png", png())), format="multipart"
    )
    assert (
        missing.status_code == 404 and "No study with id 999" in missing.json()["error"]
    )
    (weights_dir / "model.json").unlink()
    paused = staff_api.post(url, files(("a.png", png())), format="multipart")
    assert paused.status_code == 503
    assert (
        "Uploads are paused" in paused.json()["error"]
        and "model.json" in paused.json()["error"]
    )
    assert not Scan.objects.exists()


def test_too_many_files_in_one_request_says_to_use_a_zip(staff_api, study, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 2
    response = staff_api.post(
        f"/api/v1/studies/{study.pk}/scans/",
        files(*[(f"{i}.png", png(value=i)) for i in range(3)]),
        format="multipart",
    )
    assert response.status_code == 400
    assert "put them in a zip" in response.json()["error"]


def test_changes_made_through_the_api_are_attributed_to_the_caller(staff_api):
    from auditlog.models import LogEntry

    staff_api.post("/api/v1/patients/", {"identifier": "AUD-1", "name": "Audited"})
    patient = Patient.objects.get(identifier="AUD-1")
    entry = LogEntry.objects.get_for_object(patient).get()
    assert entry.actor == staff_api.user


# --- analyses ---------------------------------------------------------------------------


def test_analysis_has_results_and_authorised_download_urls(staff_api, study, user):
    analysis = analysed_scan(study, user).analyses.get()
    body = staff_api.get(f"/api/v1/analyses/{analysis.pk}/").json()
    assert body["status"] == "succeeded" and body["label"] == "malignant"
    # One class order everywhere (PostgreSQL's jsonb alone gives benign, normal, ...).
    assert list(body["probabilities"]) == ["normal", "benign", "malignant"]
    assert body["confidence"] == 0.7 and body["bbox"] == [20, 10, 40, 30]
    assert body["model_version"] == analysis.model_version and body["error"] == ""
    kinds = ("mask", "overlay", "gradcam", "seg_gradcam")
    maps = ("gradcam_map", "seg_gradcam_map")
    for kind in kinds + maps:
        url = body[f"{kind}_url"]
        assert url.endswith(f"/api/v1/analyses/{analysis.pk}/artifacts/{kind}/")
        download = staff_api.get(url, HTTP_ACCEPT="image/png")
        assert download.status_code == 200
        content = b"".join(download.streaming_content)
        with Image.open(io.BytesIO(content)) as image:
            # Pictures (drawn on demand) and the mask at the scan's size, maps smaller.
            if kind in kinds:
                assert image.size == (analysis.scan.width, analysis.scan.height)
            else:
                assert image.mode == "L" and image.size == (16, 16)
    downloads = AccessRecord.objects.filter(
        action="download", object_id=str(analysis.pk)
    )
    assert set(downloads.values_list("detail", flat=True)) == set(kinds + maps)
    assert body["retry_url"] is None


def test_a_queued_analysis_has_no_download_urls(staff_api, study):
    response = staff_api.post(
        f"/api/v1/studies/{study.pk}/scans/",
        files(("q.png", png())),
        format="multipart",
    )
    analysis_id = response.json()["accepted"][0]["analysis"]
    body = staff_api.get(f"/api/v1/analyses/{analysis_id}/").json()
    assert body["status"] == "queued" and body["mask_url"] is None
    missing = staff_api.get(f"/api/v1/analyses/{analysis_id}/artifacts/mask/")
    assert missing.status_code == 404 and "has no mask image" in missing.json()["error"]
    unknown = staff_api.get(f"/api/v1/analyses/{analysis_id}/artifacts/xray/")
    assert "use one of mask, overlay" in unknown.json()["error"]


def test_only_failed_analyses_are_retried(staff_api, study, user, enqueued):
    analysis = analysed_scan(study, user).analyses.get()
    conflict = staff_api.post(f"/api/v1/analyses/{analysis.pk}/retry/")
    assert conflict.status_code == 409
    assert "only failed analyses can be retried" in conflict.json()["error"]
    Analysis.objects.filter(pk=analysis.pk).update(status="failed", error="x")
    retried = staff_api.post(f"/api/v1/analyses/{analysis.pk}/retry/")
    assert retried.status_code == 200 and retried.json()["status"] == "queued"
    assert AccessRecord.objects.filter(
        action="retry", object_id=str(analysis.pk)
    ).exists()


# --- throttling, schema, unknown URLs ---------------------------------------------------


def test_each_user_is_throttled_on_their_own(as_role, settings):
    from rest_framework.throttling import UserRateThrottle

    rates = {**UserRateThrottle.THROTTLE_RATES, "user": "3/minute"}
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK}
    original = UserRateThrottle.THROTTLE_RATES
    UserRateThrottle.THROTTLE_RATES = rates
    try:
        first, second = as_role("staff", "one"), as_role("staff", "two")
        codes = [first.get("/api/v1/patients/").status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        throttled = first.get("/api/v1/patients/")
        assert "Too many requests" in throttled.json()["error"]
        assert int(throttled["Retry-After"]) > 0
        assert second.get("/api/v1/patients/").status_code == 200
    finally:
        UserRateThrottle.THROTTLE_RATES = original


def test_schema_and_docs_are_served(staff_api, client, user):
    schema = staff_api.get(
        "/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json"
    )
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    for path in (
        "/api/v1/auth/token/",
        "/api/v1/patients/",
        "/api/v1/studies/",
        "/api/v1/studies/{id}/",
        "/api/v1/studies/{id}/scans/",
        "/api/v1/analyses/{id}/",
        "/api/v1/analyses/{id}/retry/",
    ):
        assert path in paths
    client.force_login(user)
    docs = client.get("/api/v1/docs/")
    assert docs.status_code == 200 and b"swagger-ui" in docs.content
    # Served from the portal's own static files: no outside origin is allowed.
    assert "http" not in docs["Content-Security-Policy"]
    assert b"/static/drf_spectacular_sidecar/swagger-ui-dist/" in docs.content


def test_unknown_api_urls_answer_in_json(staff_api):
    response = staff_api.get("/api/v1/nothing/here/")
    assert response.status_code == 404
    assert "/api/v1/docs/" in response.json()["error"]
    wrong_method = staff_api.put("/api/v1/patients/", {})
    assert wrong_method.status_code == 405
    assert "Allow header" in wrong_method.json()["error"]


def test_the_root_lists_where_to_start_and_the_schema_needs_a_login(staff_api, api):
    body = staff_api.get("/api/v1/").json()
    assert body["docs"].endswith("/api/v1/docs/") and body["studies"].endswith(
        "/studies/"
    )
    assert api.get("/api/v1/schema/").status_code == 401


def test_a_model_validation_error_in_a_service_is_a_400(staff_api, monkeypatch):
    from django.core.exceptions import ValidationError

    def refuse(**kwargs: Any):
        raise ValidationError({"name": ["Names may not contain control characters."]})

    monkeypatch.setattr("portal.api.views.patients.patient_create", refuse)
    response = staff_api.post("/api/v1/patients/", {"identifier": "V-1", "name": "x"})
    assert response.status_code == 400
    assert "name: Names may not contain control characters." in response.json()["error"]


def test_analysis_and_schema_carry_the_distribution_flag(staff_api, study, user):
    flagged = analysed_scan(study, user, **FLAGGED).analyses.get()
    body = staff_api.get(f"/api/v1/analyses/{flagged.pk}/").json()
    assert (body["in_distribution"], body["ood_score"]) == (False, 97.25)
    assert (body["ood_threshold"], body["explained_class"]) == (41.5, "malignant")
    unchecked = analysed_scan(study, user, filename="b.png").analyses.get()
    body = staff_api.get(f"/api/v1/analyses/{unchecked.pk}/").json()
    assert (body["in_distribution"], body["ood_score"], body["explained_class"]) == (
        None,
        None,
        "",
    )

    schema = staff_api.get(
        "/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json"
    ).json()
    fields = schema["components"]["schemas"]["Analysis"]["properties"]
    assert fields["in_distribution"]["type"] == "boolean"
    assert fields["in_distribution"]["nullable"] is True
    assert fields["ood_score"]["type"] == "number"
    assert "explained_class" in fields and "ood_threshold" in fields
    parameters = schema["paths"]["/api/v1/studies/"]["get"]["parameters"]
    distribution = next(p for p in parameters if p["name"] == "distribution")
    assert sorted(distribution["schema"]["enum"]) == ["inside", "outside"]


def test_studies_are_filtered_by_the_distribution_flag(staff_api, user):
    patient = patient_create(identifier="H-9", name="Nine")
    flagged = study_create(patient=patient, created_by=user, accession_number="F")
    analysed_scan(flagged, user, in_distribution=False, ood_score=97.25)
    familiar = study_create(patient=patient, created_by=user, accession_number="I")
    analysed_scan(familiar, user, in_distribution=True, ood_score=3.0)

    def ids(**params: Any) -> set[int]:
        response = staff_api.get("/api/v1/studies/", params)
        assert response.status_code == 200, response.content
        return {s["id"] for s in response.json()["results"]}

    assert ids(distribution="outside") == {flagged.pk}
    assert ids(distribution="inside") == {familiar.pk}
    assert staff_api.get("/api/v1/studies/", {"distribution": "x"}).status_code == 400


def test_the_docs_show_probabilities_and_percent_filters_as_the_pages_do(staff_api):
    schema = staff_api.get(
        "/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json"
    ).json()
    probabilities = schema["components"]["schemas"]["Analysis"]["properties"][
        "probabilities"
    ]
    order = ["normal", "benign", "malignant"]
    assert list(probabilities["properties"]) == order
    assert list(probabilities["example"]) == order
    parameters = {
        p["name"]: p for p in schema["paths"]["/api/v1/studies/"]["get"]["parameters"]
    }
    assert "one decimal" in parameters["confidence_min"]["description"]


def test_beyond_the_limit_per_user_the_oldest_token_goes(api, make_user, settings):
    settings.API_TOKENS_PER_USER = 2
    make_user("staff", "nurse")
    keys = [
        api.post(
            "/api/v1/auth/token/", {"username": "nurse", "password": PASSWORD}
        ).json()["token"]
        for _ in range(3)
    ]
    answers = []
    for key in keys:
        api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
        answers.append(api.get("/api/v1/patients/").status_code)
    assert answers == [401, 200, 200]
    assert AuthToken.objects.filter(user__username="nurse").count() == 2
