"""The browser side of bulk uploads: the study page's form, report and live progress."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile, TemporaryUploadedFile
from django.urls import reverse

from portal.analyses.models import Analysis
from portal.audit.models import AccessRecord
from portal.ingest.models import UploadBatch
from tests.portal.ingest.factories import png, zip_of

pytestmark = pytest.mark.django_db


def post_files(client: Any, study: Any, *files: tuple[str, bytes], **extra: Any):
    return client.post(
        reverse("clinical:study_upload", args=[study.pk]),
        {"files": [SimpleUploadedFile(n, c) for n, c in files]},
        **extra,
    )


def test_json_upload_reports_accepted_duplicates_and_rejected_with_the_batch(
    logged_in_client, study
):
    post_files(logged_in_client, study, ("seen.png", png(value=1)))
    response = post_files(
        logged_in_client,
        study,
        ("scans.zip", zip_of([("a/new.png", png(value=2)), ("a/bad.png", b"nope")])),
        ("seen-again.png", png(value=1)),
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 200
    body = response.json()
    assert [a["filename"] for a in body["accepted"]] == ["a/new.png"]
    assert [d["filename"] for d in body["duplicates"]] == ["seen-again.png"]
    assert "not analysed again" in body["duplicates"][0]["reason"]
    assert body["rejected"] == [
        {"filename": "a/bad.png", "reason": body["rejected"][0]["reason"]}
    ]
    batch = UploadBatch.objects.get(pk=body["batch"])
    assert (batch.study, batch.source) == (study, UploadBatch.Source.WEB)
    assert body["progress_url"] == reverse("ingest:batch_progress", args=[batch.pk])


def test_uploaded_files_reach_the_view_as_temporary_files_on_disk(
    logged_in_client, study, monkeypatch, settings
):
    assert settings.FILE_UPLOAD_MAX_MEMORY_SIZE <= 64 * 1024
    seen: list[type] = []
    from portal.ingest import services

    real = services.upload_to_study

    def spy(**kwargs: Any):
        seen.extend(type(f) for f in kwargs["files"])
        return real(**kwargs)

    monkeypatch.setattr("portal.pages.views.upload_to_study", spy)
    noise = bytes(range(256)) * 400  # stored as is: about 100 KB
    big = zip_of([("a.png", png(value=1)), ("noise.bin", noise)], compression=0)
    assert len(big) > settings.FILE_UPLOAD_MAX_MEMORY_SIZE
    post_files(logged_in_client, study, ("big.zip", big))
    assert seen == [TemporaryUploadedFile]


def test_after_a_browser_upload_the_study_page_lists_what_was_not_new(
    logged_in_client, study
):
    response = post_files(
        logged_in_client,
        study,
        ("ok.png", png(value=3)),
        ("broken.png", b"not an image"),
        follow=True,
    )
    batch = UploadBatch.objects.get()
    page = logged_in_client.get(
        reverse("clinical:study_detail", args=[study.pk]), {"batch": batch.pk}
    ).content.decode()
    assert 'id="last-upload"' in page and "broken.png" in page
    assert (
        f'data-progress-url="{reverse("ingest:batch_progress", args=[batch.pk])}"'
        in page
    )
    assert "ingest/batch.js" in page
    # Later visits show the progress of the last upload, not its file names.
    later = logged_in_client.get(reverse("clinical:study_detail", args=[study.pk]))
    assert 'id="last-upload"' in later.content.decode()
    assert "broken.png" not in later.content.decode()
    assert response.status_code == 200


def test_progress_json_follows_the_analyses(logged_in_client, study):
    body = post_files(
        logged_in_client,
        study,
        ("a.png", png(value=4)),
        ("b.png", png(value=5)),
        headers={"Accept": "application/json"},
    ).json()
    url = reverse("ingest:batch_progress", args=[body["batch"]])
    progress = logged_in_client.get(url).json()
    assert (progress["images"], progress["analysed"], progress["queued"]) == (2, 0, 2)
    assert progress["finished"] is False
    Analysis.objects.update(status=Analysis.Status.SUCCEEDED)
    progress = logged_in_client.get(url).json()
    assert (progress["analysed"], progress["finished"]) == (2, True)


def test_report_page_lists_every_file_and_is_audited(logged_in_client, study, user):
    body = post_files(
        logged_in_client,
        study,
        ("z.zip", zip_of([("in/one.png", png(value=6)), ("in/two.txt", b"text")])),
        headers={"Accept": "application/json"},
    ).json()
    page = logged_in_client.get(reverse("ingest:batch_detail", args=[body["batch"]]))
    text = page.content.decode()
    assert page.status_code == 200
    assert (
        "in/one.png" in text
        and "in/two.txt" in text
        and "not a recognised image" in text
    )
    record = AccessRecord.objects.get(object_id=str(body["batch"]))
    assert (record.user, record.action) == (user, AccessRecord.Action.VIEW)


@pytest.mark.parametrize("role", ["staff", "radiologist", "administrator"])
def test_readers_of_studies_can_follow_an_upload(client, make_user, study, user, role):
    batch = UploadBatch.objects.create(study=study, source="web", created_by=user)
    client.force_login(make_user(role, f"{role}-reader"))
    assert (
        client.get(reverse("ingest:batch_progress", args=[batch.pk])).status_code == 200
    )
    assert (
        client.get(reverse("ingest:batch_detail", args=[batch.pk])).status_code == 200
    )


def test_uploads_are_closed_to_users_without_a_role_and_to_anonymous(
    client, make_user, study, user
):
    batch = UploadBatch.objects.create(study=study, source="web", created_by=user)
    url = reverse("ingest:batch_progress", args=[batch.pk])
    assert client.get(url).status_code == 302
    client.force_login(make_user(None))
    assert client.get(url).status_code == 403
    assert (
        client.get(reverse("ingest:batch_detail", args=[batch.pk])).status_code == 403
    )
    assert post_files(client, study, ("a.png", png())).status_code == 403


def test_a_radiologist_cannot_upload(client, make_user, study):
    client.force_login(make_user("radiologist", "reader"))
    assert post_files(client, study, ("a.png", png())).status_code == 403
    assert not UploadBatch.objects.exists()


def test_upload_reports_are_read_only_in_the_admin(client, staff_user, study, user):
    batch = UploadBatch.objects.create(study=study, source="web", created_by=user)
    client.force_login(staff_user)
    page = client.get(reverse("admin:ingest_uploadbatch_change", args=[batch.pk]))
    assert page.status_code == 200
    assert client.get(reverse("admin:ingest_uploadbatch_add")).status_code == 403
    client.post(
        reverse("admin:ingest_uploadbatch_delete", args=[batch.pk]), {"post": "yes"}
    )
    assert UploadBatch.objects.filter(pk=batch.pk).exists()
