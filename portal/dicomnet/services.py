"""Results as DICOM: which objects an analysis has, and sending them to the PACS.

Objects go to one place only: the DICOM_DESTINATION of the settings. Nothing here takes a
destination as an argument, so no message on the queue and no request can point the
results, which carry the patient's name and identifier, anywhere else. Each send is an
audit record (action "send") naming the destination.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.db import transaction

from portal.analyses.models import Analysis
from portal.analyses.queue import app
from portal.audit.models import AccessRecord
from portal.review.models import Review

if TYPE_CHECKING:
    from portal.dicomnet.results import DicomResults

logger = logging.getLogger(__name__)

# The worker's task, sent by name (the portal never imports workers).
SEND_DICOM_RESULTS = "workers.tasks.send_dicom_results"


def signed_review(*, analysis: Analysis) -> Review | None:
    """The latest signed reading of this analysis, if any."""
    return (
        Review.objects.filter(analysis=analysis, signed_at__isnull=False)
        .select_related("author")
        .order_by("-version")
        .first()
    )


def results_of(*, analysis: Analysis, review: Review | None = None) -> DicomResults:
    """The objects of an analysis, with its latest signed reading unless one is given."""
    # highdicom is imported where objects are made, not by every page that may queue.
    from portal.dicomnet.results import analysis_results

    return analysis_results(
        analysis=analysis, review=review or signed_review(analysis=analysis)
    )


def destination_label() -> str:
    destination = settings.DICOM_DESTINATION
    if not destination:
        return ""
    return f"{destination['ae_title']}@{destination['host']}:{destination['port']}"


def queue_results_send(*, analysis_id: int, review_id: int | None = None) -> bool:
    """Queue sending an analysis's objects once the transaction commits.

    Does nothing (False) without a destination, or when sending at this moment (after
    the analysis, after a sign-off) is switched off.
    """
    if not settings.DICOM_DESTINATION:
        return False
    wanted = (
        settings.DICOM_SEND_AFTER_SIGNOFF
        if review_id is not None
        else settings.DICOM_SEND_AFTER_ANALYSIS
    )
    if not wanted:
        return False

    def send() -> None:
        try:
            app.send_task(
                SEND_DICOM_RESULTS,
                args=[analysis_id],
                kwargs={"review_id": review_id},
                queue=settings.CELERY_DICOM_QUEUE,
            )
        except Exception:
            logger.warning(
                "sending the DICOM results of analysis %s could not be queued",
                analysis_id,
                exc_info=True,
            )

    transaction.on_commit(send)
    return True


def results_send(*, analysis_id: int, review_id: int | None = None) -> list[str]:
    """Send an analysis's objects to DICOM_DESTINATION; returns the SOP instance UIDs.

    Raises SendFailed (or OSError) for the caller to retry. With no destination it sends
    nothing and returns [].
    """
    from portal.dicomnet.results import analysis_results
    from portal.dicomnet.sender import send_datasets
    from portal.dicomnet.tls import destination_context

    destination = settings.DICOM_DESTINATION
    if not destination:
        logger.info("analysis %s: no DICOM destination, nothing sent", analysis_id)
        return []
    analysis = Analysis.objects.select_related("scan__study__patient").get(
        pk=analysis_id
    )
    review = (
        Review.objects.select_related("author").get(pk=review_id)
        if review_id is not None
        else signed_review(analysis=analysis)
    )
    results = analysis_results(analysis=analysis, review=review)
    datasets = results.datasets()
    send_datasets(
        datasets,
        calling_ae_title=settings.DICOM_AE_TITLE,
        ae_title=destination["ae_title"],
        host=destination["host"],
        port=destination["port"],
        ssl_context=destination_context(),
    )
    record_send(analysis=analysis, what="+".join(_kinds(results)))
    logger.info(
        "analysis %s: %d DICOM objects sent to %s",
        analysis_id,
        len(datasets),
        destination["ae_title"],
    )
    return [str(d.SOPInstanceUID) for d in datasets]


def record_send(*, analysis: Analysis, what: str, failed: bool = False) -> None:
    """An audit record of objects leaving for the PACS (by the system, no user)."""
    AccessRecord.objects.create(
        user=None,
        username="(system)",
        action=AccessRecord.Action.SEND_FAILED if failed else AccessRecord.Action.SEND,
        content_type=ContentType.objects.get_for_model(Analysis),
        object_id=str(analysis.pk),
        detail=f"dicom {what}"[:32],
        path=f"dicom://{destination_label()}"[:255],
    )


def _kinds(results: DicomResults) -> list[str]:
    return [
        kind for kind in ("source", "seg", "overlay", "sr") if kind in results.names
    ]
