"""Reads for analyses."""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db.models import QuerySet
from django.urls import reverse

from ml.study import DEFAULT_RULE, aggregate
from portal.analyses.composites import available_kinds
from portal.analyses.models import Analysis
from portal.clinical.models import Pathology, Scan, Study


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
    scans = (
        study.scans.select_related("lesion")
        .prefetch_related("analyses")
        .order_by("uploaded_at", "id")
    )
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
                "lesion": scan.lesion.label if scan.lesion else "",
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


def _latest_malignancies(
    analyses: QuerySet[Analysis], group: str
) -> dict[int, StudyMalignancy]:
    """ml.study.aggregate over the latest finished result of each scan of `analyses`,
    per value of `group` (the scan's study, or its lesion), in one query. A scan whose
    latest result is withheld (not a breast ultrasound) counts for nothing."""
    rows = (
        analyses.filter(status=Analysis.Status.SUCCEEDED)
        .order_by("scan_id", "-queued_at", "-pk")
        .values(
            "pk",
            "scan_id",
            group,
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
            latest.setdefault(row[group], []).append(
                {**row, "malignant": float(malignant)}
            )
    results = {}
    for key, candidates in latest.items():
        candidates.sort(key=lambda row: row["scan_id"])  # ties: the first uploaded
        aggregated = aggregate([row["malignant"] for row in candidates], DEFAULT_RULE)
        driver = candidates[aggregated.driver]
        results[key] = StudyMalignancy(
            malignant=aggregated.malignant,
            scan_id=driver["scan_id"],
            analysis_id=driver["pk"],
            filename=driver["scan__original_filename"],
            images=aggregated.images,
            rule=DEFAULT_RULE,
            driver_in_distribution=driver["in_distribution"],
        )
    return results


def study_malignancies(*, study_ids: Iterable[int]) -> dict[int, StudyMalignancy]:
    """Per study id (those with a finished result only), in one query for them all."""
    ids = list(study_ids)
    if not ids:
        return {}
    return _latest_malignancies(
        Analysis.objects.filter(scan__study_id__in=ids), "scan__study_id"
    )


@dataclass(frozen=True)
class LesionMalignancy:
    """A lesion a reader grouped images into (portal.clinical.models.Lesion), its images
    and its result: the study's rule over those images alone (None: none is analysed)."""

    lesion_id: int
    label: str
    scan_ids: tuple[int, ...]  # in upload order
    result: StudyMalignancy | None
    # Its biopsy outcome (benign / malignant, clinical.models.Pathology), "" where none
    # is recorded, and the biopsy's date where known.
    pathology: str = ""
    pathology_date: datetime.date | None = None

    @property
    def pathology_display(self) -> str:
        """The outcome as pages write it ("malignant (biopsy)"); "" where none."""
        return Pathology(self.pathology).label if self.pathology else ""


def lesion_malignancies(
    *, study_ids: Iterable[int]
) -> dict[int, list[LesionMalignancy]]:
    """Per study id, its lesions that hold an image, in label order (studies without
    one are left out); two queries for any number of studies. An image in no lesion
    counts only in its study's result, as every image does."""
    ids = list(study_ids)
    if not ids:
        return {}
    grouped = Scan.objects.filter(study_id__in=ids, lesion__isnull=False).order_by(
        "uploaded_at", "id"
    )
    members: dict[int, dict[str, Any]] = {}
    for (
        scan_id,
        lesion_id,
        label,
        study_id,
        pathology,
        pathology_date,
    ) in grouped.values_list(
        "pk",
        "lesion_id",
        "lesion__label",
        "lesion__study_id",
        "lesion__pathology",
        "lesion__pathology_date",
    ):
        lesion = members.setdefault(
            lesion_id,
            {
                "label": label,
                "study_id": study_id,
                "scan_ids": [],
                "pathology": pathology,
                "pathology_date": pathology_date,
            },
        )
        lesion["scan_ids"].append(scan_id)
    if not members:
        return {}
    results = _latest_malignancies(
        Analysis.objects.filter(scan__lesion_id__in=list(members)), "scan__lesion_id"
    )
    lesions: dict[int, list[LesionMalignancy]] = {}
    for lesion_id, lesion in members.items():
        lesions.setdefault(lesion["study_id"], []).append(
            LesionMalignancy(
                lesion_id=lesion_id,
                label=lesion["label"],
                scan_ids=tuple(lesion["scan_ids"]),
                result=results.get(lesion_id),
                pathology=lesion["pathology"],
                pathology_date=lesion["pathology_date"],
            )
        )
    for study_lesions in lesions.values():  # A ... Z, then AA
        study_lesions.sort(key=lambda lesion: (len(lesion.label), lesion.label))
    return lesions


def study_malignancy(*, study: Study) -> StudyMalignancy | None:
    return study_malignancies(study_ids=[study.pk]).get(study.pk)


def study_lesion_malignancies(*, study: Study) -> list[LesionMalignancy]:
    return lesion_malignancies(study_ids=[study.pk]).get(study.pk, [])


def scan_lesion_malignancy(*, scan: Scan) -> LesionMalignancy | None:
    """The lesion the scan is in, with its result; None for a scan in no lesion (no
    query then)."""
    if scan.lesion_id is None:
        return None
    lesions = lesion_malignancies(study_ids=[scan.study_id]).get(scan.study_id, [])
    return next(
        (lesion for lesion in lesions if lesion.lesion_id == scan.lesion_id), None
    )
