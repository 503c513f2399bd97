"""Celery tasks: thin interfaces that take an id, claim the row and call services.

`analyze_scan` claims its analysis with a compare-and-set update and returns at once if
the row is no longer queued, so redelivered and duplicate messages do nothing. When more
analyses are waiting it claims up to ANALYSIS_BATCH_SIZE of them and runs one model batch
(their own messages then find them claimed).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init
from django.conf import settings
from django.core.files.storage import default_storage
from django.db import InterfaceError, OperationalError

from ml.decode import DecodedImage, DecodeError, decode_image
from portal.analyses import services
from portal.analyses.models import Analysis
from workers.analyzer import get_analyzer, preload
from workers.celery_app import app, inference_task

logger = logging.getLogger(__name__)

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    OperationalError,
    InterfaceError,
)
try:  # S3 errors are not OSErrors
    from botocore.exceptions import BotoCoreError, ClientError

    TRANSIENT_ERRORS += (BotoCoreError, ClientError)
except ImportError:  # pragma: no cover - botocore ships with django-storages[s3]
    pass

worker_process_init.connect(preload, weak=False)


@dataclass
class _Work:
    analysis_id: int
    image: DecodedImage


def _worker_name(task: Any) -> str:
    hostname = getattr(task.request, "hostname", None) or os.uname().nodename
    return f"{hostname}:{os.getpid()}"


@inference_task(bind=True, name="workers.tasks.analyze_scan")
def analyze_scan(self: Any, analysis_id: int) -> None:
    worker = _worker_name(self)
    if not services.analysis_claim(analysis_id=analysis_id, worker=worker):
        logger.info("analysis %s is not queued; nothing to do", analysis_id)
        return
    batch = [analysis_id]
    try:
        model_version = Analysis.objects.values_list("model_version", flat=True).get(
            pk=analysis_id
        )
        batch += services.analysis_claim_waiting(
            model_version=model_version,
            worker=worker,
            limit=settings.ANALYSIS_BATCH_SIZE - 1,
            exclude=batch,
        )
        _run_batch(batch)
    except TRANSIENT_ERRORS as exc:
        logger.warning(
            "transient error on analyses %s; requeueing", batch, exc_info=True
        )
        _release(batch, f"temporary error: {type(exc).__name__}: {exc}")
    except SoftTimeLimitExceeded:
        logger.warning("analyses %s hit the time limit; requeueing", batch)
        _release(
            batch,
            f"took longer than the {settings.CELERY_TASK_SOFT_TIME_LIMIT} s limit",
        )
    except Exception as exc:
        logger.exception("analyses %s failed unexpectedly", batch)
        _fail(batch, f"internal error: {type(exc).__name__}: {exc}")


@app.task(name="workers.tasks.reconcile_analyses", ignore_result=True)
def reconcile_analyses() -> dict[str, int]:
    return services.analyses_reconcile()


def _release(analysis_ids: list[int], reason: str) -> None:
    for analysis_id in analysis_ids:
        if services.analysis_release(analysis_id=analysis_id, error=reason):
            attempts = Analysis.objects.values_list("attempts", flat=True).get(
                pk=analysis_id
            )
            services.enqueue_analysis(
                analysis_id, countdown=services.retry_countdown(attempts)
            )


def _fail(analysis_ids: list[int], reason: str) -> None:
    for analysis_id in analysis_ids:
        services.analysis_record_failure(analysis_id=analysis_id, error=reason)


def _load_scan(analysis: Analysis) -> DecodedImage:
    with default_storage.open(analysis.scan.original.name, "rb") as stored:
        content = stored.read()
    return decode_image(content, max_pixels=settings.UPLOAD_MAX_PIXELS)


def _run_batch(analysis_ids: list[int]) -> None:
    try:
        analyzer = get_analyzer()
    except Exception as exc:
        logger.exception("model could not be loaded")
        _fail(analysis_ids, f"the model could not be loaded: {exc}")
        return

    analyses = Analysis.objects.select_related("scan").in_bulk(analysis_ids)
    work: list[_Work] = []
    for analysis_id in analysis_ids:
        analysis = analyses[analysis_id]
        if analysis.model_version != analyzer.model_version:
            services.analysis_record_failure(
                analysis_id=analysis_id,
                error=(
                    f"this worker runs model {analyzer.model_version}, not "
                    f"{analysis.model_version}; retry to analyse with the current model"
                ),
            )
            continue
        try:
            work.append(_Work(analysis_id, _load_scan(analysis)))
        except DecodeError as exc:
            services.analysis_record_failure(
                analysis_id=analysis_id,
                error=f"the stored scan could not be decoded: {exc}",
            )

    for item, outcome in zip(work, _analyze(analyzer, work), strict=True):
        if isinstance(outcome, Exception):
            services.analysis_record_failure(
                analysis_id=item.analysis_id,
                error=f"the model failed on this image: {type(outcome).__name__}: {outcome}",
            )
            continue
        try:
            artifacts = outcome.render_artifacts(item.image.pixels)
        except TRANSIENT_ERRORS:
            raise
        except Exception as exc:
            logger.exception(
                "rendering artifacts of analysis %s failed", item.analysis_id
            )
            services.analysis_record_failure(
                analysis_id=item.analysis_id,
                error=f"could not draw the result images: {type(exc).__name__}: {exc}",
            )
            continue
        services.analysis_record_success(
            analysis_id=item.analysis_id, result=outcome.to_dict(), artifacts=artifacts
        )
        logger.info("analysis %s succeeded", item.analysis_id)


def _analyze(analyzer: Any, work: list[_Work]) -> list[Any]:
    """Run one batch; if it fails, run the images one by one to find the bad one."""
    if not work:
        return []
    images = [item.image for item in work]
    try:
        return list(analyzer.analyze(images, batch_size=len(images)))
    except (SoftTimeLimitExceeded, *TRANSIENT_ERRORS):
        raise
    except Exception as exc:
        if len(images) == 1:
            logger.exception("model failed on analysis %s", work[0].analysis_id)
            return [exc]
        logger.warning("batch of %d failed; retrying images one by one", len(images))
    return [outcome for item in work for outcome in _analyze(analyzer, [item])]
