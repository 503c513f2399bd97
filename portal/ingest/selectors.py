"""Reads for upload batches: the report rows and the live progress of their analyses."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, QuerySet
from django.urls import reverse

from portal.analyses.models import Analysis
from portal.clinical.models import Study
from portal.ingest.models import UploadBatch, UploadItem

Status = Analysis.Status


def batch_items(*, batch: UploadBatch) -> QuerySet[UploadItem]:
    return batch.items.select_related("analysis", "scan").order_by("id")


def latest_batch(*, study: Study) -> UploadBatch | None:
    return study.upload_batches.order_by("-created_at", "-id").first()


def batch_progress(*, batch: UploadBatch) -> dict[str, Any]:
    """Files by outcome and their analyses by status: what the progress bar draws.

    Duplicates count with the analysis of the scan they were linked to, so the bar
    reaches the end when every image of the upload has a result, old or new.
    """
    outcomes = dict(
        batch.items.values_list("outcome").annotate(n=Count("id")).order_by()
    )
    statuses = dict(
        batch.items.exclude(analysis=None)
        .values_list("analysis__status")
        .annotate(n=Count("id"))
        .order_by()
    )
    accepted = outcomes.get(UploadItem.Outcome.ACCEPTED, 0)
    duplicates = outcomes.get(UploadItem.Outcome.DUPLICATE, 0)
    images = accepted + duplicates
    analysed = statuses.get(Status.SUCCEEDED, 0)
    failed = statuses.get(Status.FAILED, 0)
    # A duplicate of a scan that never had an analysis has nothing to wait for.
    unanalysed = images - sum(statuses.values())
    return {
        "batch": batch.pk,
        "study": batch.study_id,
        "receiving": batch.finished_at is None,
        "files": images + outcomes.get(UploadItem.Outcome.REJECTED, 0),
        "accepted": accepted,
        "duplicates": duplicates,
        "rejected": outcomes.get(UploadItem.Outcome.REJECTED, 0),
        "images": images,
        "analysed": analysed,
        "failed": failed,
        "running": statuses.get(Status.RUNNING, 0),
        "queued": statuses.get(Status.QUEUED, 0),
        "finished": batch.finished_at is not None
        and analysed + failed + unanalysed >= images,
        "report_url": reverse("ingest:batch_detail", args=[batch.pk]),
        "progress_url": reverse("ingest:batch_progress", args=[batch.pk]),
    }
