"""Reads for analyses."""

from __future__ import annotations

from typing import Any

from django.urls import reverse

from portal.analyses.models import ARTIFACT_KINDS, Analysis
from portal.clinical.models import Scan, Study


def latest_analysis(*, scan: Scan) -> Analysis | None:
    """The newest analysis of a scan (uses prefetched analyses when available)."""
    analyses = sorted(
        scan.analyses.all(), key=lambda a: (a.queued_at, a.pk), reverse=True
    )
    return analyses[0] if analyses else None


def analysis_status_payload(analysis: Analysis) -> dict[str, Any]:
    payload = analysis.to_status_dict()
    payload["artifacts"] = {
        kind: reverse("analyses:artifact", args=[analysis.pk, kind])
        for kind in ARTIFACT_KINDS
        if getattr(analysis, kind)
    }
    payload["retry_url"] = reverse("analyses:retry", args=[analysis.pk])
    return payload


def study_status(*, study: Study) -> list[dict[str, Any]]:
    """One entry per scan of the study with its latest analysis, for the live page."""
    scans = study.scans.prefetch_related("analyses").order_by("uploaded_at", "id")
    entries = []
    for scan in scans:
        analysis = latest_analysis(scan=scan)
        entries.append(
            {
                "scan_id": scan.pk,
                "filename": scan.original_filename,
                "width": scan.width,
                "height": scan.height,
                "format": scan.format,
                "original_url": reverse("clinical:scan_original", args=[scan.pk]),
                "review_url": reverse("review:scan_review", args=[scan.pk]),
                "analysis": analysis_status_payload(analysis) if analysis else None,
            }
        )
    return entries
