"""The study-level result (issue 20): the most suspicious image's malignant probability and
the image driving it, on the study page, worklist, dashboard, PDF and API."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from portal.analyses.models import Analysis
from portal.analyses.selectors import study_malignancies, study_malignancy
from portal.clinical.services import patient_create, study_create

from .pdftext import pdf_text

pytestmark = pytest.mark.django_db


def _p(malignant: float) -> dict[str, float]:
    rest = 1.0 - malignant
    return {"normal": rest / 2, "benign": rest / 2, "malignant": malignant}


@pytest.fixture
def three_scans(study: Any, user: Any, make_analysed_scan: Any) -> list[Any]:
    return [
        make_analysed_scan(study, user, filename=name, probabilities=_p(malignant))
        for name, malignant in (
            ("left-1.png", 0.3),
            ("left-2.png", 0.8),
            ("right-1.png", 0.5),
        )
    ]


def test_the_most_suspicious_latest_result_drives_the_study(
    study: Any, user: Any, three_scans: list[Any]
) -> None:
    result = study_malignancy(study=study)
    assert result.malignant == pytest.approx(0.8)
    assert result.scan_id == three_scans[1].pk and result.filename == "left-2.png"
    assert result.images == 3 and result.rule == "max"
    # A newer analysis of the driving scan replaces its older one; a failed one
    # does not count.
    old = three_scans[1].analyses.get()
    newer = Analysis.objects.create(
        scan=three_scans[1],
        model_version=f"{old.model_version}-newer",
        status=Analysis.Status.SUCCEEDED,
        label="benign",
        confidence=0.6,
        probabilities=_p(0.2),
        queued_at=old.queued_at.replace(year=old.queued_at.year + 1),
    )
    Analysis.objects.create(
        scan=three_scans[0],
        model_version=f"{old.model_version}-failed",
        status=Analysis.Status.FAILED,
        queued_at=newer.queued_at,
    )
    result = study_malignancy(study=study)
    assert result.malignant == pytest.approx(0.5)
    assert result.scan_id == three_scans[2].pk and result.images == 3


def test_a_study_without_results_has_none(
    study: Any, user: Any, make_analysed_scan: Any, django_assert_num_queries: Any
) -> None:
    other = study_create(
        patient=patient_create(identifier="H-77", name="Other"), created_by=user
    )
    make_analysed_scan(other, user, probabilities=_p(0.4))
    with django_assert_num_queries(1):  # one query for any number of studies
        results = study_malignancies(study_ids=[study.pk, other.pk])
    assert set(results) == {other.pk}
    assert study_malignancy(study=study) is None


def test_study_page_worklist_and_dashboard_name_the_driving_image(
    client: Any, radiologist: Any, study: Any, three_scans: list[Any]
) -> None:
    client.force_login(radiologist)
    page = client.get(reverse("clinical:study_detail", args=[study.pk]))
    html = page.content.decode()
    assert 'id="study-malignancy"' in html
    assert "Study malignancy: <strong" in html and ">80.0%</strong>" in html
    driver_link = (
        f"{reverse('review:scan_review', args=[three_scans[1].pk])}"
        f"?analysis={three_scans[1].analyses.get().pk}"
    )
    assert driver_link in html and "left-2.png</a>" in html
    worklist = client.get(reverse("review:worklist")).content.decode()
    # The worklist shows the study's value; its rows name the most suspicious
    # *unsigned* image (issue 19), so the driving image is not linked there.
    assert "Study malignancy" in worklist and ">80.0%</span>" in worklist
    dashboard = client.get(reverse("review:dashboard")).content.decode()
    assert "Study malignancy" in dashboard
    assert dashboard.count(driver_link) >= 3  # each of the study's rows names it


def test_the_pdf_reports_the_study_malignancy(
    client: Any, radiologist: Any, study: Any, three_scans: list[Any]
) -> None:
    client.force_login(radiologist)
    text = pdf_text(client.get(reverse("review:study_report", args=[study.pk])).content)
    assert "Study malignancy" in text
    assert "80.0%" in text and "image 2, left-2.png" in " ".join(text.split())


def test_the_api_gives_the_study_malignancy_in_list_and_detail(
    make_user: Any, study: Any, three_scans: list[Any]
) -> None:
    from knox.models import AuthToken
    from rest_framework.test import APIClient

    _, key = AuthToken.objects.create(make_user("staff", "api-staff"))
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    expected = {
        "malignant": pytest.approx(0.8),
        "scan": three_scans[1].pk,
        "analysis": three_scans[1].analyses.get().pk,
        "filename": "left-2.png",
        "images": 3,
        "rule": "max",
    }
    detail = api.get(f"/api/v1/studies/{study.pk}/")
    assert detail.status_code == 200, detail.content
    assert detail.json()["study_malignancy"] == expected
    listed = api.get("/api/v1/studies/").json()["results"]
    assert [s["study_malignancy"] for s in listed] == [expected]


def test_the_worklist_ranks_by_each_scans_latest_result(
    client: Any, radiologist: Any, user: Any, make_analysed_scan: Any
) -> None:
    from portal.clinical.models import Study
    from portal.review.services import study_review_refresh

    first = study_create(
        patient=patient_create(identifier="H-81", name="First"), created_by=user
    )
    second = study_create(
        patient=patient_create(identifier="H-82", name="Second"), created_by=user
    )
    reanalysed = make_analysed_scan(first, user, probabilities=_p(0.9))
    make_analysed_scan(second, user, probabilities=_p(0.6))
    old = reanalysed.analyses.get()
    Analysis.objects.create(
        scan=reanalysed,
        model_version=f"{old.model_version}-newer",
        status=Analysis.Status.SUCCEEDED,
        label="benign",
        confidence=0.7,
        probabilities=_p(0.3),
        queued_at=old.queued_at.replace(year=old.queued_at.year + 1),
    )
    study_review_refresh(study_id=first.pk)
    first.refresh_from_db()
    assert first.max_malignant == pytest.approx(0.3)
    assert first.max_malignant == pytest.approx(study_malignancy(study=first).malignant)
    client.force_login(radiologist)
    ordered = list(client.get(reverse("review:worklist")).context["page"].object_list)
    assert [s.pk for s in ordered] == [second.pk, first.pk]
    assert Study.objects.get(pk=second.pk).max_malignant == pytest.approx(0.6)
