"""Issue 18, finding 2: every read of patient data leaves an access record.

API lists and details, the admin's list and change pages of clinical records, the
dashboard, the worklist, the patient search and the status polls; a list is recorded
row by row in one insert, with the client address from trusted proxies only.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from rest_framework.test import APIClient

from portal.accounts.roles import RADIOLOGIST
from portal.accounts.tokens import token_issue
from portal.audit.models import AccessRecord
from portal.clinical.models import Patient
from portal.clinical.services import patient_create
from portal.ingest.models import UploadBatch
from tests.portal.review.conftest import analysed_scan

pytestmark = pytest.mark.django_db


def _records(**filters: Any) -> list[tuple[str, str, str]]:
    return [
        (r.content_type.model, r.object_id, r.detail)
        for r in AccessRecord.objects.filter(**filters).order_by("id")
    ]


def _api_for(user: Any) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token_issue(user=user)[1]}")
    return api


def _inserts(queries: CaptureQueriesContext) -> int:
    return sum(
        1
        for q in queries.captured_queries
        if q["sql"].startswith("INSERT") and "audit_accessrecord" in q["sql"]
    )


def test_an_api_patient_export_records_every_patient_in_one_insert(user, settings):
    settings.NUM_PROXIES = 1
    settings.TRUSTED_PROXIES = ["10.0.0.2"]
    patients = [
        patient_create(identifier=f"H-{n:04d}", name=f"Patient {n}", birth_date=None)
        for n in range(120)
    ]
    api = _api_for(user)

    with CaptureQueriesContext(connection) as queries:
        response = api.get(
            "/api/v1/patients/?page_size=200",
            REMOTE_ADDR="10.0.0.2",
            HTTP_X_FORWARDED_FOR="198.51.100.7",
        )

    assert response.status_code == 200
    assert len(response.json()["results"]) == 120
    records = AccessRecord.objects.filter(detail="api patient list")
    assert sorted(int(r.object_id) for r in records) == sorted(p.pk for p in patients)
    assert {r.username for r in records} == {user.username}
    assert {r.client_address for r in records} == {"198.51.100.7"}
    assert {r.content_type.model for r in records} == {"patient"}
    # One statement on PostgreSQL; SQLite's bound-parameter limit splits the same
    # bulk insert into Django's batches.
    fields = [f for f in AccessRecord._meta.concrete_fields if not f.primary_key]
    batch = connection.ops.bulk_batch_size(fields, records) or len(records)
    assert _inserts(queries) == -(-len(records) // batch)
    if connection.vendor == "postgresql":
        assert _inserts(queries) == 1


def test_api_details_and_study_list_are_recorded(user, study):
    scan = analysed_scan(study, user)
    analysis = scan.analyses.get()
    batch = UploadBatch.objects.create(
        study=study, source=UploadBatch.Source.API, created_by=user
    )
    api = _api_for(user)

    for url in (
        f"/api/v1/patients/{study.patient_id}/",
        "/api/v1/studies/",
        f"/api/v1/analyses/{analysis.pk}/",
        f"/api/v1/batches/{batch.pk}/",
    ):
        assert api.get(url).status_code == 200, url

    assert _records() == [
        ("patient", str(study.patient_id), "api patient"),
        ("study", str(study.pk), "api study list"),
        ("analysis", str(analysis.pk), "api analysis"),
        ("uploadbatch", str(batch.pk), "api batch"),
    ]


def test_pages_and_status_polls_are_recorded(client, user, make_user, study):
    scan = analysed_scan(study, user)
    study.refresh_from_db()
    if not study.awaiting_review:
        study.awaiting_review = True
        study.save(update_fields=["awaiting_review"])
    batch = UploadBatch.objects.create(
        study=study, source=UploadBatch.Source.API, created_by=user
    )
    reader = make_user(RADIOLOGIST, "reader")
    client.force_login(reader)

    for url in (
        reverse("review:dashboard"),
        reverse("review:worklist"),
        reverse("clinical:patient_list") + "?q=Jane",
        reverse("clinical:study_status", args=[study.pk]),
        reverse("ingest:batch_progress", args=[batch.pk]),
    ):
        assert client.get(url).status_code == 200, url

    analysis = scan.analyses.get()
    assert _records() == [
        ("analysis", str(analysis.pk), "dashboard"),
        ("study", str(study.pk), "worklist"),
        ("patient", str(study.patient_id), "patient search"),
        ("study", str(study.pk), "status poll"),
        ("uploadbatch", str(batch.pk), "status poll"),
    ]


@pytest.mark.parametrize(
    "app_model",
    [
        "clinical.patient",
        "clinical.study",
        "clinical.scan",
        "analyses.analysis",
        "review.review",
        "ingest.uploadbatch",
    ],
)
def test_admin_list_and_change_pages_of_clinical_records_are_recorded(
    client, staff_user, user, study, app_model
):
    from portal.review.services import review_save

    scan = analysed_scan(study, user)
    review_save(
        analysis=scan.analyses.get(),
        author=staff_user,
        agrees_with_model=True,
        label="malignant",
        birads="5",
        note="",
        sign=True,
    )
    UploadBatch.objects.create(
        study=study, source=UploadBatch.Source.API, created_by=user
    )
    app, model = app_model.split(".")
    row = (
        ContentType.objects.get(app_label=app, model=model).model_class().objects.get()
    )
    client.force_login(staff_user)

    listing = client.get(reverse(f"admin:{app}_{model}_changelist"))
    change = client.get(reverse(f"admin:{app}_{model}_change", args=[row.pk]))

    assert listing.status_code == 200 and change.status_code == 200
    assert _records(content_type__model=model) == [
        (model, str(row.pk), "admin list"),
        (model, str(row.pk), "admin page"),
    ]


def test_a_patient_list_page_records_only_the_rows_it_shows(client, user, settings):
    for n in range(60):
        patient_create(identifier=f"P-{n:03d}", name=f"Someone {n}", birth_date=None)
    client.force_login(user)

    client.get(reverse("clinical:patient_list"))

    shown = list(Patient.objects.order_by("identifier").values_list("pk", flat=True))
    assert sorted(int(o) for _, o, _ in _records()) == sorted(shown[:50])


def test_a_study_created_over_the_api_is_not_a_read(user, patient):
    api = _api_for(user)
    response = api.post(
        "/api/v1/studies/",
        {"patient": patient.identifier, "study_date": "2026-01-02"},
        format="json",
    )
    assert response.status_code == 201, response.content
    assert not AccessRecord.objects.exists()
