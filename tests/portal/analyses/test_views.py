from __future__ import annotations

import pytest
from django.urls import reverse

from portal.analyses import services
from portal.analyses.models import Analysis
from portal.analyses.services import scan_submit
from portal.clinical.uploads import validate_content
from tests.results import record_result

pytestmark = pytest.mark.django_db


@pytest.fixture
def analysis(study, user, make_png):
    upload = validate_content(filename="a.png", content=make_png())
    scan = scan_submit(
        study=study, upload=upload, uploaded_by=user, model_version="test-model-1"
    )
    return scan.analyses.get()


def _fail(analysis: Analysis, reason: str = "model exploded") -> None:
    services.analysis_claim(analysis_id=analysis.pk, worker="w")
    services.analysis_record_failure(analysis_id=analysis.pk, error=reason)


def test_failed_analysis_shows_its_reason_and_a_retry_url(logged_in_client, analysis):
    _fail(analysis)
    body = logged_in_client.get(
        reverse("clinical:study_status", args=[analysis.scan.study_id])
    ).json()
    payload = body["scans"][0]["analysis"]
    assert payload["status"] == "failed"
    assert payload["error"] == "model exploded"
    assert payload["retry_url"] == reverse("analyses:retry", args=[analysis.pk])


def test_retry_button_requeues_the_analysis(
    logged_in_client, analysis, django_capture_on_commit_callbacks, enqueued
):
    _fail(analysis)
    enqueued.clear()
    with django_capture_on_commit_callbacks(execute=True):
        response = logged_in_client.post(reverse("analyses:retry", args=[analysis.pk]))
    assert response.status_code == 302
    analysis.refresh_from_db()
    assert analysis.status == "queued"
    assert enqueued == [(analysis.pk, None)]


def test_retry_is_post_only_and_refuses_unfailed_analyses(logged_in_client, analysis):
    url = reverse("analyses:retry", args=[analysis.pk])
    assert logged_in_client.get(url).status_code == 405
    response = logged_in_client.post(url, headers={"Accept": "application/json"})
    assert response.status_code == 409


def test_artifacts_are_streamed_from_storage(logged_in_client, analysis):
    record_result(analysis, artifacts={"overlay": b"\x89PNG overlay"})
    response = logged_in_client.get(
        reverse("analyses:artifact", args=[analysis.pk, "overlay"])
    )
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"\x89PNG overlay"
    missing = logged_in_client.get(
        reverse("analyses:artifact", args=[analysis.pk, "gradcam"])
    )
    assert missing.status_code == 404
    unknown = logged_in_client.get(
        reverse("analyses:artifact", args=[analysis.pk, "secrets"])
    )
    assert unknown.status_code == 404
