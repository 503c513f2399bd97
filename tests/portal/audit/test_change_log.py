"""Creates, changes and deletes of the clinical records are kept by django-auditlog."""

from __future__ import annotations

from auditlog.models import LogEntry
from django.urls import reverse

from portal.analyses.models import Analysis
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


def test_changes_written_in_one_insert_are_the_entries_a_save_would_write(study, user):
    from auditlog.context import set_actor

    from portal.audit.services import audit_updates

    analyses = [analysed_scan(study, user).analyses.get() for _ in range(2)]
    befores = [Analysis.objects.get(pk=a.pk) for a in analyses]
    for analysis in analyses:
        analysis.label = "benign"
    with set_actor(user, remote_addr="10.1.2.3"):
        assert audit_updates(zip(befores, analyses, strict=True)) == 2
        assert audit_updates([(befores[0], befores[0])]) == 0  # nothing changed
        # What auditlog itself writes for the same change, for comparison.
        befores[1].label = "benign"
        befores[1].save()
    for analysis in analyses:
        change = _entries(analysis).filter(action=LogEntry.Action.UPDATE).first()
        assert change.changes_dict["label"] == ["malignant", "benign"]
        assert (change.actor, change.remote_addr) == (user, "10.1.2.3")
    ours, auditlogs = _entries(analyses[1]).filter(action=LogEntry.Action.UPDATE)
    for field in (
        "content_type",
        "object_pk",
        "object_id",
        "object_repr",
        "serialized_data",
        "additional_data",
        "actor",
        "actor_email",
        "remote_addr",
        "changes",
    ):
        assert getattr(ours, field) == getattr(auditlogs, field), field


def test_changes_of_the_fields_written_are_the_entries_a_save_of_them_writes(
    study, user
):
    from portal.audit.services import audit_updates

    analysis = analysed_scan(study, user).analyses.get()
    before = Analysis.objects.get(pk=analysis.pk)
    # A bulk write of `label` only: a change to a field it does not write is not one.
    analysis.label, analysis.worker = "benign", "not-written"
    assert audit_updates([(before, analysis)], fields=["label"]) == 1
    # What auditlog itself writes for save(update_fields=["label"]), for comparison.
    before.label, before.worker = "benign", "not-written"
    before.save(update_fields=["label"])
    ours, auditlogs = _entries(analysis).filter(action=LogEntry.Action.UPDATE)
    assert ours.changes_dict == {"label": ["malignant", "benign"]}
    assert ours.changes == auditlogs.changes
