"""Reads for analyses."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.urls import reverse

from ml.study import DEFAULT_RULE, aggregate
from portal.analyses.composites import available_kinds
from portal.analyses.models import Analysis
from portal.clinical.models import Scan, Study


def latest_analysis(*, scan: Scan) -> Analysis | None:
    """The newest analysis of a scan (uses prefetched analyses when available)."""
    analyses = sorted(
        scan.analyses.all(), key=lambda a: (a.queued_at, a.pk), reverse=True
    )
    return analyses[0] if analyses else None


LAYER_TITLES = {
    "gradcam": "Classification Grad-CAM",
    "seg_gradcam": "Segmentation Grad-CAM",
    "outline": "Model's lesion outline",
}


def viewer_layers(analysis: Analysis) -> list[dict[str, str]]:
    """The layers a page draws over the scan, bottom to top: heatmaps, then the outline.

    A heatmap is the stored grey map, coloured and blended in the browser ("heatmap");
    analyses from before maps were stored have only the worker's blended picture
    ("picture"), shown as it is.
    """
    if analysis.withheld:  # not a breast ultrasound: nothing of the model is drawn
        return []
    layers = []
    for kind in ("gradcam", "seg_gradcam"):
        if getattr(analysis, f"{kind}_map"):
            source, url_kind = "heatmap", f"{kind}_map"
        elif getattr(analysis, kind):
            source, url_kind = "picture", kind
        else:
            continue
        layers.append(
            {
                "kind": kind,
                "title": LAYER_TITLES[kind],
                "source": source,
                "url": reverse("analyses:artifact", args=[analysis.pk, url_kind]),
                "download_url": reverse("analyses:artifact", args=[analysis.pk, kind]),
            }
        )
    if analysis.mask:
        layers.append(
            {
                "kind": "outline",
                "title": LAYER_TITLES["outline"],
                "source": "picture",
                "url": reverse("review:analysis_outline", args=[analysis.pk]),
                "download_url": reverse(
                    "analyses:artifact", args=[analysis.pk, "overlay"]
                ),
            }
        )
    return layers


def analysis_status_payload(analysis: Analysis) -> dict[str, Any]:
    payload = analysis.to_status_dict()
    payload["artifacts"] = {
        kind: reverse("analyses:artifact", args=[analysis.pk, kind])
        for kind in available_kinds(analysis)
    }
    payload["layers"] = viewer_layers(analysis)
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
                "scanner": "" if scan.scanner.is_site else scan.scanner.name,
                "original_url": reverse("clinical:scan_original", args=[scan.pk]),
                "display_url": reverse("review:scan_display", args=[scan.pk]),
                "review_url": reverse("review:scan_review", args=[scan.pk]),
                "analysis": analysis_status_payload(analysis) if analysis else None,
            }
        )
    return entries


@dataclass(frozen=True)
class StudyMalignancy:
    """A study's malignancy (ml.study.aggregate over the latest finished result of each
    scan) and the image that drives it."""

    malignant: float
    scan_id: int
    analysis_id: int
    filename: str
    images: int  # finished results aggregated
    rule: str
    driver_in_distribution: bool | None


def study_malignancies(*, study_ids: Iterable[int]) -> dict[int, StudyMalignancy]:
    """Per study id (those with a finished result only), in one query for them all.
    A scan whose latest result is withheld (not a breast ultrasound) counts for nothing."""
    ids = list(study_ids)
    if not ids:
        return {}
    rows = (
        Analysis.objects.filter(
            status=Analysis.Status.SUCCEEDED, scan__study_id__in=ids
        )
        .order_by("scan_id", "-queued_at", "-pk")
        .values(
            "pk",
            "scan_id",
            "scan__study_id",
            "scan__original_filename",
            "probabilities",
            "in_distribution",
            "withheld",
        )
    )
    latest: dict[int, list[dict[str, Any]]] = {}
    seen: set[int] = set()
    for row in rows:
        if row["scan_id"] in seen:  # an older result of a scan already counted
            continue
        seen.add(row["scan_id"])
        if row["withheld"]:  # not a breast ultrasound: no probability may be shown
            continue
        malignant = (row["probabilities"] or {}).get("malignant")
        if malignant is not None:
            latest.setdefault(row["scan__study_id"], []).append(
                {**row, "malignant": float(malignant)}
            )
    results = {}
    for study_id, candidates in latest.items():
        candidates.sort(key=lambda row: row["scan_id"])  # ties: the first uploaded
        study = aggregate([row["malignant"] for row in candidates], DEFAULT_RULE)
        driver = candidates[study.driver]
        results[study_id] = StudyMalignancy(
            malignant=study.malignant,
            scan_id=driver["scan_id"],
            analysis_id=driver["pk"],
            filename=driver["scan__original_filename"],
            images=study.images,
            rule=DEFAULT_RULE,
            driver_in_distribution=driver["in_distribution"],
        )
    return results


def study_malignancy(*, study: Study) -> StudyMalignancy | None:
    return study_malignancies(study_ids=[study.pk]).get(study.pk)
