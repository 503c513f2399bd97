"""Creates, changes and deletes of the clinical records are kept by django-auditlog."""

from __future__ import annotations

from auditlog.models import LogEntry
from django.urls import reverse

from portal.clinical.models import Patient
from portal.review.services import review_save
from tests.portal.review.conftest import analysed_scan
from tests.results import record_result


def _entries(instance):
    return LogEntry.objects.get_for_object(instance).order_by("timestamp", "pk")


def test_patient_and_study_created_through_the_pages_name_the_user_and_address(
    client, user
):
    client.force_login(user)
    client.post(
        reverse("clinical:patient_list"),
        {"identifier": "P-77", "name": "Ada Example"},
        REMOTE_ADDR="10.9.8.7",
    )
    patient = Patient.objects.get(identifier="P-77")
    (entry,) = _entries(patient)
    assert entry.action == LogEntry.Action.CREATE
    assert entry.actor == user
    assert entry.remote_addr == "10.9.8.7"
    client.post(
        reverse("clinical:patient_detail", args=[patient.pk]),
        {"accession_number": "A-1", "study_date": "2026-02-01"},
    )
    (study_entry,) = _entries(patient.studies.get())
    assert study_entry.actor == user


def test_scan_and_analysis_creation_and_changes_are_logged(study, user):
    scan = analysed_scan(study, user)
    analysis = scan.analyses.get()
    assert _entries(scan).filter(action=LogEntry.Action.CREATE).exists()
    assert _entries(analysis).filter(action=LogEntry.Action.CREATE).exists()
    analysis.label = "benign"
    analysis.save()
    change = _entries(analysis).filter(action=LogEntry.Action.UPDATE).last()
    assert change.changes_dict["label"] == ["malignant", "benign"]


def test_a_stored_result_is_logged_as_the_change_of_its_analysis(study, user, make_png):
    # The worker writes a batch's rows in bulk: each still gets its change record.
    from portal.analyses.services import scan_submit
    from portal.clinical.uploads import validate_content

    upload = validate_content(filename="a.png", content=make_png())
    scan = scan_submit(study=study, upload=upload, uploaded_by=user, model_version="m1")
    analysis = scan.analyses.get()
    assert record_result(analysis, artifacts={"mask": b"m"})
    change = _entries(analysis).filter(action=LogEntry.Action.UPDATE).get()
    changes = change.changes_dict
    assert changes["status"] == ["running", "succeeded"]
    assert changes["label"] == ["", "benign"]
    assert changes["mask"] == ["", f"analyses/{analysis.pk}/mask.png"]
    assert change.actor is None  # a worker, not a person


def test_review_draft_sign_off_and_amendment_are_logged(study, user, make_user):
    radiologist = make_user("radiologist", "dr-log")
    analysis = analysed_scan(study, user).analyses.get()
    values = {"agrees_with_model": True, "label": "", "birads": "4A"}
    draft = review_save(analysis=analysis, author=radiologist, **values)
    review_save(analysis=analysis, author=radiologist, sign=True, **values)
    amendment = review_save(
        analysis=analysis,
        author=radiologist,
        sign=True,
        **{**values, "agrees_with_model": False, "label": "benign"},
    )
    actions = [e.action for e in _entries(draft)]
    assert actions == [LogEntry.Action.CREATE, LogEntry.Action.UPDATE]
    assert "signed_at" in _entries(draft).last().changes_dict
    assert _entries(amendment).get().action == LogEntry.Action.CREATE


def test_a_delete_is_logged(db):
    patient = Patient.objects.create(identifier="GONE", name="Temporary")
    pk = patient.pk
    patient.delete()
    assert LogEntry.objects.filter(
        object_pk=str(pk), action=LogEntry.Action.DELETE
    ).exists()


def test_a_change_record_ignores_a_forged_forwarded_for(client, user):
    """django-auditlog's own middleware took the first X-Forwarded-For entry."""
    client.force_login(user)
    client.post(
        reverse("clinical:patient_list"),
        {"identifier": "P-78", "name": "Ada Example"},
        REMOTE_ADDR="10.9.8.7",
        HTTP_X_FORWARDED_FOR="6.6.6.6",
    )
    (entry,) = _entries(Patient.objects.get(identifier="P-78"))
    assert entry.remote_addr == "10.9.8.7"
