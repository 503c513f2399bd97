"""Celery tasks: thin interfaces that take an id, claim the row and call services.

`analyze_scan` claims its analysis with a compare-and-set update and returns at once if
the row is no longer queued, so redelivered and duplicate messages do nothing. When more
analyses are waiting it claims them too, ANALYSIS_BATCH_SIZE at a time, and keeps the
model busy: while the model runs one batch, a loader thread claims the next and reads
the model inputs its scans were stored with (decoding the original only for a scan
without one of its model's size), and a few threads store the results of the previous
one (the mask and heatmaps as small PNGs; no pictures are drawn here). It stops claiming at
half the soft time limit, and returns only when every claimed analysis is recorded
(acks_late then acknowledges the message); rows whose messages were consumed as no-ops
are still covered by the reconciler if the worker dies mid-way.

`send_dicom_results` offers an analysis's objects to the PACS; `fit_site_calibration`
fits a site calibration from the signed reads (numpy only, no model), claiming its
CalibrationFit row the same way.

The model is the version the analysis names (workers/analyzer.py loads it on first
need), so a promotion in the model registry reaches new analyses without a restart.

With a shadow version set, once a batch of the active version's results is stored the
drain sends `shadow_analyses` the batch's ids on a queue of its own (CELERY_SHADOW_QUEUE)
at the broker's lowest priority: no patient's result waits for the comparison. That task
claims nothing and never writes to an analysis: it runs the shadow version on the stored
scans, scores its outline against the stored mask of the result shown, and keeps what it
gives for comparison only (ShadowResult, one per analysis and version, so a redelivered
message adds nothing).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init
from django.conf import settings
from django.core.files.storage import default_storage
from django.db import InterfaceError, OperationalError, connections

from ml import render
from ml.decode import DecodedImage, DecodeError, decode_image
from ml.metrics import dice_per_image
from ml.model_input import ModelInput, ModelInputError, from_npy
from portal.analyses import queue, services
from portal.analyses.models import Analysis
from portal.dicomnet.services import SEND_DICOM_RESULTS, queue_results_send
from portal.logs import log_context
from portal.registry.selectors import model_version_active, model_version_shadow
from portal.review import calibration
from workers import liveness
from workers.analyzer import get_analyzer, preload
from workers.celery_app import inference_task

if TYPE_CHECKING:  # ml.inference imports TensorFlow: only the worker process loads it
    from ml.inference import Analyzer, ImageAnalysis

    # What the model gave for one image: its analysis, or the error it raised on it.
    Outcome = ImageAnalysis | Exception

logger = logging.getLogger(__name__)
T = TypeVar("T")

# How often a draining task reads the registry's shadow version again.
REGISTRY_RECHECK_SECONDS = 10.0
SHADOW_ANALYSES = "workers.tasks.shadow_analyses"
# Redis (kombu) takes priority 0 first and 9 last, across every queue a worker consumes.
SHADOW_PRIORITY = 9

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

# The heartbeat thread starts with the pool process, before the model loads (minutes on
# a busy machine): a replacement worker sweeps up a dead one's rows meanwhile.
worker_process_init.connect(liveness.start, weak=False)
worker_process_init.connect(preload, weak=False)


@dataclass
class _Work:
    analysis_id: int
    # The model input stored with the scan, or (without a usable one) the decoded scan.
    image: DecodedImage | ModelInput
    scan_id: int | None = None


@inference_task(bind=True, name=queue.ANALYZE_SCAN)
def analyze_scan(self: Task, analysis_id: int) -> None:
    worker = liveness.worker_name()
    if not services.analysis_claim(analysis_id=analysis_id, worker=worker):
        logger.info("analysis %s is not queued; nothing to do", analysis_id)
        return
    try:
        # The version the analysis names: the active one when it was created.
        version = Analysis.objects.values_list("model_version", flat=True).get(
            pk=analysis_id
        )
    except TRANSIENT_ERRORS as exc:
        _release([analysis_id], f"temporary error: {type(exc).__name__}: {exc}")
        return
    try:
        analyzer = get_analyzer(version)
    except Exception as exc:
        logger.exception("model %s could not be loaded", version)
        _fail([analysis_id], f"the model could not be loaded: {exc}")
        return
    Pipeline(analyzer, worker=worker).drain(first_id=analysis_id)


class Pipeline:
    """One task's run of the claimed analysis and whatever else is waiting, one batch
    at a time, in three overlapping stages: the model runs batch k, a loader thread
    claims and reads batch k+1, and finishing threads store the results of batch k-1.

    The threads live as long as the task (ANALYSIS_RENDER_THREADS finishing threads,
    one loader; with 0 every stage runs inline in the task's thread).
    """

    def __init__(self, analyzer: Analyzer, *, worker: str) -> None:
        self.analyzer = analyzer
        self.worker = worker
        self.batch_size: int = settings.ANALYSIS_BATCH_SIZE
        self.threads: int = settings.ANALYSIS_RENDER_THREADS
        self.stop_claiming_at = (
            time.monotonic() + settings.CELERY_TASK_SOFT_TIME_LIMIT * 0.5
        )
        # Rows this task has already had (one it requeued waits for its own message).
        self.seen: set[int] = set()
        self._load_pool: ThreadPoolExecutor | None = None
        self._shadow_cached: str | None = None
        self._shadow_checked_at: float | None = None
        self._finish_pool: ThreadPoolExecutor | None = None

    def drain(self, *, first_id: int) -> None:
        analyzer = self.analyzer
        self.seen.add(first_id)
        work: list[_Work] = []
        in_hand = [first_id]  # claimed by this task, not yet run: released on an error
        upcoming: Future[list[_Work]] | None = None
        finishing: list[Future[None]] = []
        try:
            in_hand = [first_id] + services.analysis_claim_waiting(
                model_version=analyzer.model_version,
                worker=self.worker,
                limit=self.batch_size - 1,
                exclude=[first_id],
            )
            self.seen.update(in_hand)
            work = _load(in_hand, analyzer)
            in_hand = _ids(work)
            while work:
                upcoming = self._submit_load()
                shadow = self._safe_shadow_version()
                outcomes = _analyze(analyzer, work)
                finishing.append(self._submit_finish(work, outcomes, shadow))
                in_hand = []
                work, upcoming = upcoming.result(), None
                in_hand = _ids(work)
        except TRANSIENT_ERRORS as exc:
            logger.warning(
                "transient error on analyses %s; requeueing", in_hand, exc_info=True
            )
            _release(in_hand, f"temporary error: {type(exc).__name__}: {exc}")
        except SoftTimeLimitExceeded:
            logger.warning("analyses %s hit the time limit; requeueing", in_hand)
            limit = settings.CELERY_TASK_SOFT_TIME_LIMIT
            _release(in_hand, f"took longer than the {limit} s limit")
        except Exception as exc:
            logger.exception("analyses %s failed unexpectedly", in_hand)
            _fail(in_hand, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            if upcoming is not None:
                # Loaded but never run: back to the queue, with no attempt used up.
                _release(_ids(upcoming.result()), "", count_attempt=False)
            for future in finishing:
                future.result()
            self._close()

    def _safe_shadow_version(self) -> str | None:
        """The shadow version for the batch about to run, None on any error: a registry
        that cannot be read costs a comparison, never the batch."""
        try:
            return self._shadow_version()
        except SoftTimeLimitExceeded:
            raise
        except Exception:
            logger.exception("the shadow version could not be read")
            return None

    def _shadow_version(self) -> str | None:
        """The version to run beside this task's, or None: read from the registry once
        per REGISTRY_RECHECK_SECONDS, not per batch (two queries a batch were a tenth of
        the worker's own time), so a change reaches a draining task within that time."""
        now = time.monotonic()
        if self._shadow_checked_at is None or (
            now - self._shadow_checked_at >= REGISTRY_RECHECK_SECONDS
        ):
            version = model_version_shadow()
            if version == self.analyzer.model_version or (
                version is not None
                and self.analyzer.model_version != model_version_active()
            ):
                version = None
            self._shadow_cached, self._shadow_checked_at = version, now
        return self._shadow_cached

    def _claim_next(self) -> list[_Work]:
        if time.monotonic() >= self.stop_claiming_at:
            return []
        claimed = services.analysis_claim_waiting(
            model_version=self.analyzer.model_version,
            worker=self.worker,
            limit=self.batch_size,
            exclude=list(self.seen),
        )
        self.seen.update(claimed)
        return _load(claimed, self.analyzer)

    def _submit_load(self) -> Future[list[_Work]]:
        """Claim and decode the next batch beside the model (inline without threads)."""
        if self.threads <= 0:
            return _done(self._safe_claim_next)
        if self._load_pool is None:
            self._load_pool = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="load"
            )
        return self._load_pool.submit(_in_thread, self._safe_claim_next)

    def _safe_claim_next(self) -> list[_Work]:
        # A failure here only means no prefetched batch: the rows it claimed (if any)
        # are released by _load or found later by the reconciler; the task goes on.
        try:
            return self._claim_next()
        except Exception:
            logger.exception("claiming the next batch failed")
            return []

    def _submit_finish(
        self, work: list[_Work], outcomes: list[Outcome], shadow: str | None
    ) -> Future[None]:
        if self.threads <= 0:
            return _done(_finish, work, outcomes, shadow)
        if self._finish_pool is None:
            self._finish_pool = ThreadPoolExecutor(
                max_workers=self.threads, thread_name_prefix="finish"
            )
        return self._finish_pool.submit(_in_thread, _finish, work, outcomes, shadow)

    def _close(self) -> None:
        """Close each pool thread's database connection, then the pools."""
        for pool, threads in ((self._load_pool, 1), (self._finish_pool, self.threads)):
            if pool is not None:
                _close_connections(pool, threads)
                pool.shutdown(wait=True)
        self._load_pool = self._finish_pool = None


def _done(function: Callable[..., T], *args: Any) -> Future[T]:
    """A stage run inline, in the task's thread, as a finished future."""
    future: Future[T] = Future()
    future.set_result(function(*args))
    return future


def _ids(work: list[_Work]) -> list[int]:
    return [item.analysis_id for item in work]


@queue.app.task(
    bind=True,
    name=SEND_DICOM_RESULTS,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def send_dicom_results(
    self: Task, analysis_id: int, review_id: int | None = None
) -> None:
    """C-STORE an analysis's DICOM objects to DICOM_DESTINATION, retrying with backoff.

    Every failed attempt is an audit record, so the trail shows each time the objects
    were offered to the PACS and not (or not all) taken, and when the task gave up.
    """
    from portal.dicomnet import services as dicom_services
    from portal.dicomnet.results import ResultsUnavailable
    from portal.dicomnet.sender import SendFailed

    try:
        dicom_services.results_send(analysis_id=analysis_id, review_id=review_id)
    except ResultsUnavailable as exc:
        logger.warning("analysis %s: nothing to send: %s", analysis_id, exc)
    except (SendFailed, OSError) as exc:
        retries = self.request.retries
        giving_up = retries >= settings.DICOM_SEND_MAX_RETRIES
        dicom_services.record_send(
            analysis=Analysis.objects.get(pk=analysis_id),
            what=f"attempt {retries + 1}, {'gave up' if giving_up else 'retrying'}",
            failed=True,
        )
        if giving_up:
            logger.error(
                "analysis %s: giving up sending DICOM results after %d attempts: %s",
                analysis_id,
                retries + 1,
                exc,
            )
            return
        countdown = min(
            settings.DICOM_SEND_RETRY_MAX_DELAY,
            settings.DICOM_SEND_RETRY_DELAY * 2**retries,
        )
        logger.warning(
            "analysis %s: sending DICOM results failed (%s); retrying in %g s",
            analysis_id,
            exc,
            countdown,
        )
        raise self.retry(
            exc=exc, countdown=countdown, max_retries=settings.DICOM_SEND_MAX_RETRIES
        ) from None


@queue.app.task(
    bind=True,
    name=calibration.FIT_SITE_CALIBRATION,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def fit_site_calibration(self: Task, fit_id: int) -> None:
    """Fit a site calibration from the signed reads (portal.review.calibration).

    The row is the job: a duplicate message finds it claimed and does nothing. A passing
    fault hands the row back to queued and tries again with backoff; after
    CALIBRATION_FIT_MAX_RETRIES it is left failed, for an administrator to run again.
    """
    claim = None
    try:
        claim = calibration.calibration_fit_claim(fit_id=fit_id)
        if claim is None:
            logger.info("calibration fit %s is not claimable; nothing to do", fit_id)
            return
        calibration.calibration_fit_run(fit_id=fit_id, claim=claim)
    except TRANSIENT_ERRORS as exc:
        retries = self.request.retries
        reason = f"a passing fault stopped the fit ({type(exc).__name__})"
        # Under this run's claim: if the fit went stale and another run holds it now,
        # this run changes nothing (None before the claim: nothing is held).
        if retries >= settings.CALIBRATION_FIT_MAX_RETRIES:
            logger.error("calibration fit %s: giving up: %s", fit_id, exc)
            calibration.calibration_fit_fail(
                fit_id=fit_id, error=f"{reason}; run it again.", claim=claim
            )
            return
        logger.warning("calibration fit %s: %s; retrying", fit_id, exc)
        try:
            calibration.calibration_fit_requeue(
                fit_id=fit_id, error=f"{reason}; retrying", claim=claim
            )
        except TRANSIENT_ERRORS:
            # Left running: once stale, the page offers to run it again.
            logger.warning("calibration fit %s: could not hand it back", fit_id)
        raise self.retry(
            exc=exc,
            countdown=settings.CALIBRATION_FIT_RETRY_DELAY * 2**retries,
            max_retries=settings.CALIBRATION_FIT_MAX_RETRIES,
        ) from None


@inference_task(bind=True, name=SHADOW_ANALYSES)
def shadow_analyses(self: Task, analysis_ids: list[int], model_version: str) -> None:
    """Run the shadow version on analyses already shown and keep what it gives for
    comparison only (issue 17: never the result).

    Claims nothing and writes nothing to an analysis. Analyses that already have a
    result of this version are skipped (a redelivered message runs no model), and the
    service keeps the first result of a race. A passing fault (database, storage) is
    retried with backoff, SHADOW_MAX_RETRIES times; a failure of the shadow model on
    an image is recorded as that result's error; anything else is logged and dropped.
    """
    try:
        _shadow_run(analysis_ids, model_version)
    except SoftTimeLimitExceeded:
        logger.warning("the shadow run on analyses %s hit the time limit", analysis_ids)
    except TRANSIENT_ERRORS as exc:
        retries = self.request.retries
        if retries >= settings.SHADOW_MAX_RETRIES:
            logger.error(
                "shadow %s on analyses %s: giving up after %d attempts: %s",
                model_version,
                analysis_ids,
                retries + 1,
                exc,
            )
            return
        countdown = settings.SHADOW_RETRY_DELAY * 2**retries
        logger.warning(
            "shadow %s on analyses %s: %s: %s; retrying in %g s",
            model_version,
            analysis_ids,
            type(exc).__name__,
            exc,
            countdown,
        )
        raise self.retry(
            exc=exc, countdown=countdown, max_retries=settings.SHADOW_MAX_RETRIES
        ) from None
    except Exception:
        logger.exception("the shadow model failed on analyses %s", analysis_ids)


def _shadow_run(analysis_ids: list[int], model_version: str) -> None:
    if model_version_shadow() != model_version:
        logger.info(
            "model %s is no longer the shadow; analyses %s not compared",
            model_version,
            analysis_ids,
        )
        return
    analyses = list(
        Analysis.objects.select_related("scan")
        .filter(pk__in=analysis_ids, status=Analysis.Status.SUCCEEDED)
        .exclude(model_version=model_version)
        .exclude(shadow_results__model_version=model_version)
        .order_by("pk")
    )
    if not analyses:
        logger.info("analyses %s need no shadow run", analysis_ids)
        return
    try:
        shadow = get_analyzer(model_version)
    except TRANSIENT_ERRORS:
        raise
    except Exception:
        logger.exception("shadow model %s could not be loaded", model_version)
        return
    results: list[tuple[int, dict[str, Any] | str]] = []
    work: list[_Work] = []
    for analysis in analyses:
        try:
            image = _load_scan(analysis, shadow)
        except DecodeError as exc:
            results.append(
                (analysis.pk, f"the stored scan could not be decoded: {exc}")
            )
            continue
        except FileNotFoundError:
            logger.warning("analysis %s: its stored scan is missing", analysis.pk)
            continue
        work.append(_Work(analysis.pk, image, analysis.scan_id))
    shown = {analysis.pk: analysis for analysis in analyses}
    for item, outcome in zip(work, _analyze(shadow, work), strict=True):
        if isinstance(outcome, Exception):
            results.append((item.analysis_id, f"{type(outcome).__name__}: {outcome}"))
            continue
        result = outcome.to_dict()
        dice = _mask_dice(shown[item.analysis_id], outcome)
        if dice is not None:
            result["mask_dice"] = dice
        results.append((item.analysis_id, result))
    services.shadow_results_record(model_version=model_version, results=results)
    logger.info("shadow %s ran on analyses %s", model_version, _ids(work))


def _mask_dice(analysis: Analysis, theirs: ImageAnalysis) -> float | None:
    """Dice of the shadow's lesion mask with the one shown, read from storage as the
    portal reads it; None when there is no outline to compare (withheld by either
    model, or no stored mask)."""
    if analysis.withheld or theirs.withheld or not analysis.mask:
        return None
    try:
        with default_storage.open(analysis.mask.name, "rb") as stored:
            shown = render.read_mask(stored.read())
    except FileNotFoundError:
        logger.warning("analysis %s: its stored mask is missing", analysis.pk)
        return None
    if shown.shape != theirs.lesion_mask.shape:
        logger.warning(
            "analysis %s: the shadow's mask is %s, the stored one %s; not compared",
            analysis.pk,
            theirs.lesion_mask.shape,
            shown.shape,
        )
        return None
    return float(dice_per_image(shown[None], theirs.lesion_mask[None])[0])


def _send_shadow(analysis_ids: list[int], model_version: str) -> None:
    """Send a batch's stored analyses to the shadow version. Never raises: a broker
    that cannot take the message costs the comparison, never the results."""
    try:
        shadow_analyses.apply_async(
            args=[analysis_ids, model_version],
            queue=settings.CELERY_SHADOW_QUEUE,
            priority=SHADOW_PRIORITY,
        )
    except Exception:
        logger.warning(
            "the shadow run of analyses %s could not be queued",
            analysis_ids,
            exc_info=True,
        )


def _release(
    analysis_ids: list[int], reason: str, *, count_attempt: bool = True
) -> None:
    for analysis_id in analysis_ids:
        services.analysis_requeue(
            analysis_id=analysis_id, error=reason, count_attempt=count_attempt
        )


def _fail(analysis_ids: list[int], reason: str) -> None:
    for analysis_id in analysis_ids:
        services.analysis_record_failure(analysis_id=analysis_id, error=reason)


def _load_scan(analysis: Analysis, analyzer: Analyzer) -> DecodedImage | ModelInput:
    """The scan as the model takes it: the model input stored at upload (a small array,
    no decoding) when there is one of this model's size, else the original decoded."""
    scan = analysis.scan
    if scan.model_input:
        try:
            with default_storage.open(scan.model_input.name, "rb") as stored:
                content = stored.read()
            return from_npy(
                content,
                side=analyzer.image_size,
                height=scan.height,
                width=scan.width,
            )
        except (FileNotFoundError, ModelInputError) as exc:
            logger.info(
                "analysis %s: the stored model input is not used (%s); decoding the scan",
                analysis.pk,
                exc,
            )
    return _decode_original(scan.original.name)


def _decode_original(name: str) -> DecodedImage:
    with default_storage.open(name, "rb") as stored:
        content = stored.read()
    return decode_image(content, max_pixels=settings.UPLOAD_MAX_PIXELS)


def _load(analysis_ids: list[int], analyzer: Analyzer) -> list[_Work]:
    """Decode the stored scans of claimed analyses; rows that cannot run are settled here."""
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
            work.append(
                _Work(analysis_id, _load_scan(analysis, analyzer), analysis.scan_id)
            )
        except DecodeError as exc:
            services.analysis_record_failure(
                analysis_id=analysis_id,
                error=f"the stored scan could not be decoded: {exc}",
            )
        except TRANSIENT_ERRORS as exc:
            logger.warning(
                "could not read the scan of analysis %s", analysis_id, exc_info=True
            )
            _release([analysis_id], f"temporary error: {type(exc).__name__}: {exc}")
    return work


def _in_thread(function: Callable[..., T], *args: Any) -> T:
    # A pool thread keeps its database connection for its next job in this task (on
    # PostgreSQL a new one costs ~8 ms: a tenth of the model's time on a batch) and
    # drops it after an error, which may have left it unusable (a database restart).
    # _close_connections closes them all when the task ends.
    try:
        return function(*args)
    except BaseException:
        connections.close_all()
        raise


def _close_connections(pool: ThreadPoolExecutor | None, threads: int) -> None:
    """Close the database connection of each thread of the pool.

    Idle threads must not hold one past the task: it would outlive it (and block
    dropping a test database). One job per thread, held at a barrier so that no
    thread takes two.
    """
    if pool is None or threads <= 0:
        return
    barrier = threading.Barrier(threads)

    def close() -> None:
        try:
            barrier.wait(timeout=10)
        except threading.BrokenBarrierError:
            logger.warning("a pool thread may keep its database connection")
        connections.close_all()

    for future in [pool.submit(close) for _ in range(threads)]:
        future.result()


def _finish(
    work: list[_Work], outcomes: list[Outcome], shadow: str | None = None
) -> None:
    """Store one batch's results, recording success or the reason each failed, then send
    the analyses that succeeded to the `shadow` version (if any). Never raises.

    What is stored is the model's output (mask, grey heatmaps): pictures of it are drawn
    by the browser or, for downloads, by the portal on demand, not here. The batch is
    stored in one transaction; if that fails, each result is stored on its own, so one
    bad result cannot cost the others theirs.
    """
    succeeded = _store(work, outcomes)
    if shadow is not None and succeeded:
        _send_shadow(succeeded, shadow)


def _store(work: list[_Work], outcomes: list[Outcome]) -> list[int]:
    """_finish's storing; the ids of the analyses recorded as succeeded."""
    ready: list[tuple[_Work, dict[str, Any], dict[str, bytes]]] = []
    for item, outcome in zip(work, outcomes, strict=True):
        # Every line logged about this result carries its analysis and scan ids.
        with log_context(analysis_id=item.analysis_id, scan_id=item.scan_id):
            prepared = _prepare(item, outcome)
        if prepared is not None:
            ready.append((item, *prepared))
    if not ready:
        return []
    try:
        recorded = set(
            services.analyses_record_success(
                results=[
                    (item.analysis_id, result, arts) for item, result, arts in ready
                ]
            )
        )
    except Exception:
        logger.warning(
            "storing analyses %s together failed; storing them one by one",
            [item.analysis_id for item, _, _ in ready],
            exc_info=True,
        )
        succeeded = []
        for item, result, artifacts in ready:
            with log_context(analysis_id=item.analysis_id, scan_id=item.scan_id):
                if _record_one(item, result, artifacts):
                    succeeded.append(item.analysis_id)
        return succeeded
    succeeded = []
    for item, _, _ in ready:
        if item.analysis_id in recorded:
            with log_context(analysis_id=item.analysis_id, scan_id=item.scan_id):
                _succeeded(item.analysis_id)
            succeeded.append(item.analysis_id)
    return succeeded


def _prepare(
    item: _Work, outcome: Outcome
) -> tuple[dict[str, Any], dict[str, bytes]] | None:
    """The result and the files to store, or None with the failure recorded."""
    analysis_id = item.analysis_id
    try:
        if isinstance(outcome, Exception):
            services.analysis_record_failure(
                analysis_id=analysis_id,
                error=f"the model failed on this image: {type(outcome).__name__}: {outcome}",
            )
            return None
        try:
            return outcome.to_dict(), outcome.stored_artifacts()
        except TRANSIENT_ERRORS:
            raise
        except Exception as exc:
            logger.exception("encoding the results of analysis %s failed", analysis_id)
            services.analysis_record_failure(
                analysis_id=analysis_id,
                error=f"could not encode the results: {type(exc).__name__}: {exc}",
            )
            return None
    except TRANSIENT_ERRORS as exc:
        _requeue_after(analysis_id, exc)
    except Exception as exc:
        logger.exception("recording analysis %s failed", analysis_id)
        _fail_after(analysis_id, exc)
    return None


def _record_one(
    item: _Work, result: dict[str, Any], artifacts: dict[str, bytes]
) -> bool:
    """Store one result; True when it was recorded as the analysis's success."""
    try:
        if services.analysis_record_success(
            analysis_id=item.analysis_id, result=result, artifacts=artifacts
        ):
            _succeeded(item.analysis_id)
            return True
    except TRANSIENT_ERRORS as exc:
        _requeue_after(item.analysis_id, exc)
    except Exception as exc:
        logger.exception("recording analysis %s failed", item.analysis_id)
        _fail_after(item.analysis_id, exc)
    return False


def _succeeded(analysis_id: int) -> None:
    queue_results_send(analysis_id=analysis_id)
    logger.info("analysis %s succeeded", analysis_id)


def _requeue_after(analysis_id: int, exc: BaseException) -> None:
    """Give a row back to the queue after a transient error storing it. Never raises."""
    logger.warning(
        "transient error storing analysis %s (%s: %s); requeueing",
        analysis_id,
        type(exc).__name__,
        exc,
    )
    try:
        _release([analysis_id], f"temporary error: {type(exc).__name__}: {exc}")
    except Exception:
        logger.exception(
            "could not requeue analysis %s; the reconciler will", analysis_id
        )


def _fail_after(analysis_id: int, exc: BaseException) -> None:
    """Fail a row whose result could not be stored, with the reason. Never raises."""
    try:
        services.analysis_record_failure(
            analysis_id=analysis_id,
            error=f"internal error: {type(exc).__name__}: {exc}",
        )
    except Exception:
        logger.exception("could not record the failure of analysis %s", analysis_id)


def _analyze(analyzer: Analyzer, work: list[_Work]) -> list[Outcome]:
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
