from __future__ import annotations

from django.urls import reverse


def test_every_review_page_renders_for_a_radiologist(
    client, radiologist, scan, analysis
):
    client.force_login(radiologist)
    for url in (
        reverse("review:dashboard"),
        reverse("review:worklist"),
        reverse("review:agreement"),
        reverse("review:scan_review", args=[scan.pk]),
        reverse("review:scan_display", args=[scan.pk]),
        reverse("review:analysis_outline", args=[analysis.pk]),
        reverse("review:study_report", args=[scan.study_id]),
        reverse("clinical:study_detail", args=[scan.study_id]),
    ):
        response = client.get(url)
        assert response.status_code == 200, (url, response.content[:2000])
