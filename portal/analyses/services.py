"""Writes to analyses. The Analysis row is the job; Redis only carries its id.

Status changes are compare-and-set updates on the row, so a redelivered or duplicate
message, a reconciler and a user pressing Retry can race without doing work twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import numpy as np
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from portal.analyses import queue
from portal.analyses.modelinfo import (
    ModelVersionUnavailable,
    current_model_version,
    model_calibration,
    ood_threshold,
)
from portal.analyses.models import (
    ARTIFACT_KINDS,
    COMPOSITE_KINDS,
    RESULT_FIELDS,
    VERDICT_FIELDS,
    Analysis,
    ShadowResult,
)
from portal.analyses.signals import results_recorded
from portal.audit.services import audit_update, audit_updates
from portal.clinical.models import Scan, Study
from portal.clinical.scanners import Scanner
from portal.clinical.services import scan_create
from portal.clinical.uploads import ValidatedUpload
from portal.registry.models import SiteCalibration
from portal.registry.selectors import site_calibration_in_use

logger = logging.getLogger(__name__)

Status = Analysis.Status


def _enqueue_on_commit(analysis_id: int) -> None:
    transaction.on_commit(lambda: _send_or_leave_to_reconciler(analysis_id))


def _send_or_leave_to_reconciler(analysis_id: int) -> None:
    # The row is committed: with the broker down the upload still succeeds, and the
    # reconciler sends the message once the broker is back.
    try:
        queue.send_analysis(analysis_id)
    except Exception:
        logger.warning(
            "analysis %s queued but not sent (broker unreachable); the reconciler "
            "will send it",
            analysis_id,
            exc_info=True,
        )


@transaction.atomic
def analysis_create(*, scan: Scan, model_version: str | None = None) -> Analysis:
    analysis = Analysis.objects.create(
        scan=scan, model_version=model_version or current_model_version()
    )
    _enqueue_on_commit(analysis.pk)
    return analysis


@transaction.atomic
def scan_submit(
    *,
    study: Study,
    upload: ValidatedUpload,
    uploaded_by: AbstractBaseUser,
    model_version: str,
) -> Scan:
    """Store a validated upload and queue its analysis (sent once the transaction commits)."""
    scan = scan_create(study=study, upload=upload, uploaded_by=uploaded_by)
    analysis_create(scan=scan, model_version=model_version)
    return scan


@transaction.atomic
def analysis_retry(*, analysis: Analysis) -> Analysis:
    """Run a failed analysis again: the same row for the same model, else a new row.

    A new model version gets its own row so that the failed one stays on record.
    """
    version = current_model_version()
    if version != analysis.model_version:
        existing = Analysis.objects.filter(
            scan_id=analysis.scan_id, model_version=version
        ).first()
        if existing is not None:
            if existing.can_retry:
                return analysis_retry(analysis=existing)
            return existing
        return analysis_create(scan=analysis.scan, model_version=version)
    updated = Analysis.objects.filter(pk=analysis.pk, status=Status.FAILED).update(
        status=Status.QUEUED,
        attempts=0,
        queued_at=timezone.now(),
        started_at=None,
        heartbeat_at=None,
        finished_at=None,
        worker="",
        error="",
    )
    if updated:
        _enqueue_on_commit(analysis.pk)
    analysis.refresh_from_db()
    return analysis


def analysis_claim(*, analysis_id: int, worker: str) -> bool:
    """Take a queued analysis for this worker; False if someone else has it or it is done."""
    now = timezone.now()
    updated = Analysis.objects.filter(pk=analysis_id, status=Status.QUEUED).update(
        status=Status.RUNNING,
        started_at=now,
        heartbeat_at=now,
        finished_at=None,
        worker=worker[:255],
        attempts=F("attempts") + 1,
        error="",
    )
    return updated == 1


def analysis_claim_waiting(
    *, model_version: str, worker: str, limit: int, exclude: list[int] | None = None
) -> list[int]:
    """Claim up to `limit` more queued analyses (oldest first) to run in the same batch.

    Their own messages then find them claimed and do nothing. On PostgreSQL one
    statement: an UPDATE of the oldest queued rows it can lock (FOR UPDATE SKIP LOCKED:
    rows another worker is taking are passed over, and a row taken meanwhile is no
    longer queued when its lock is granted), RETURNING what it took. Elsewhere a
    compare-and-set UPDATE for the batch (status still queued), then one read of the
    rows it took, known by this claim's worker and time: a row another worker took
    meanwhile is not ours, and the batch is smaller.
    """
    if limit <= 0:
        return []
    if connection.vendor == "postgresql":
        return _claim_waiting_postgresql(
            model_version=model_version,
            worker=worker[:255],
            limit=limit,
            exclude=exclude or [],
        )
    candidates = list(
        Analysis.objects.filter(status=Status.QUEUED, model_version=model_version)
        .exclude(pk__in=exclude or [])
        .order_by("queued_at", "pk")
        .values_list("pk", flat=True)[:limit]
    )
    if not candidates:
        return []
    now = timezone.now()
    worker = worker[:255]
    Analysis.objects.filter(pk__in=candidates, status=Status.QUEUED).update(
        status=Status.RUNNING,
        started_at=now,
        heartbeat_at=now,
        finished_at=None,
        worker=worker,
        attempts=F("attempts") + 1,
        error="",
    )
    claimed = set(
        Analysis.objects.filter(
            pk__in=candidates, status=Status.RUNNING, worker=worker, started_at=now
        ).values_list("pk", flat=True)
    )
    return [pk for pk in candidates if pk in claimed]


def _claim_waiting_postgresql(
    *, model_version: str, worker: str, limit: int, exclude: list[int]
) -> list[int]:
    table = connection.ops.quote_name(Analysis._meta.db_table)
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {table} SET status = %s, started_at = %s, heartbeat_at = %s,
                finished_at = NULL, worker = %s, attempts = attempts + 1, error = ''
            WHERE id IN (
                SELECT id FROM {table}
                WHERE status = %s AND model_version = %s AND NOT (id = ANY(%s))
                ORDER BY queued_at, id
                LIMIT %s
                FOR UPDATE SKIP LOCKED
            )
            RETURNING id, queued_at
            """,
            [
                Status.RUNNING,
                now,
                now,
                worker,
                Status.QUEUED,
                model_version,
                list(exclude),
                limit,
            ],
        )
        claimed = cursor.fetchall()
    return [pk for pk, _ in sorted(claimed, key=lambda row: (row[1], row[0]))]


def _artifact_file_name(kind: str) -> str:
    return f"{kind}.png"


def analysis_record_success(
    *, analysis_id: int, result: dict[str, Any], artifacts: dict[str, bytes]
) -> bool:
    """Store artifacts and results of a running analysis; False if it is no longer ours."""
    recorded = analyses_record_success(results=[(analysis_id, result, artifacts)])
    return analysis_id in recorded


@transaction.atomic
def analyses_record_success(
    *, results: Sequence[tuple[int, dict[str, Any], dict[str, bytes]]]
) -> list[int]:
    """Store a batch's results in one transaction; the ids recorded (those still ours).

    (analysis id, result, artifacts) each. One transaction and one refresh of each
    study's worklist columns for the batch: a worker storing eight scans of one study
    locks and recounts that study once, not eight times.
    """
    for _, _, artifacts in results:
        unknown = set(artifacts) - set(ARTIFACT_KINDS)
        if unknown:
            raise ValueError(f"unknown artifact kinds: {sorted(unknown)}")
    ids = [analysis_id for analysis_id, _, _ in results]
    # Locked in id order, as every batch locks them: two batches cannot deadlock.
    rows = (
        Analysis.objects.select_for_update(of=("self",))
        .select_related("scan")
        .filter(pk__in=ids)
        .order_by("pk")
    )
    analyses = {analysis.pk: analysis for analysis in rows}
    # The rows as they were, for the audit records (copied, not read again).
    before = {pk: _copy(analysis) for pk, analysis in analyses.items()}
    # Each result is shown through the site calibration in use for its model and its
    # scan's scanner model now (the scanner's own, else the site's).
    active = {
        key: site_calibration_in_use(model_version=key[0], scanner=key[1])
        for key in {(a.model_version, a.scan.scanner) for a in analyses.values()}
    }
    # Each model's out-of-distribution threshold, read from its model.json once a batch.
    thresholds = {
        version: _ood_threshold(version)
        for version in {a.model_version for a in analyses.values()}
    }
    recorded: list[int] = []
    for analysis_id, result, artifacts in results:
        analysis = analyses.get(analysis_id)
        if analysis is None:
            logger.warning("analysis %s no longer exists", analysis_id)
            continue
        if analysis.status != Status.RUNNING:
            logger.warning(
                "analysis %s is %s, not recording its result",
                analysis_id,
                analysis.status,
            )
            continue
        _record_result(
            analysis,
            result,
            calibration=active[(analysis.model_version, analysis.scan.scanner)],
            model_ood_threshold=thresholds[analysis.model_version],
        )
        # A withheld scan keeps no outline or heatmap: nothing to show, nothing to leak.
        _store_artifacts(analysis, {} if analysis.withheld else artifacts)
        recorded.append(analysis_id)
    _write_rows([analyses[pk] for pk in recorded], STORED_FIELDS)
    audit_updates(((before[pk], analyses[pk]) for pk in recorded), fields=STORED_FIELDS)
    # In this transaction: the review app keeps each study's worklist columns.
    results_recorded.send(
        sender=Analysis,
        analysis_ids=recorded,
        study_ids=sorted({analyses[pk].scan.study_id for pk in recorded}),
    )
    return recorded


# What storing a result writes on its row.
# logits: the raw output kept (shown nowhere) to re-score under a site calibration.
STORED_FIELDS = (
    "status",
    "finished_at",
    "error",
    "logits",
    *RESULT_FIELDS,
    *ARTIFACT_KINDS,
)


def _write_rows(analyses: Sequence[Analysis], fields: Sequence[str]) -> None:
    """Write `fields` of already locked rows, in the caller's transaction.

    On PostgreSQL one UPDATE joined to a VALUES list of the rows: a batch is one round
    trip, not one per row. Elsewhere (SQLite) one plain UPDATE per row. Both are cheaper
    than QuerySet.bulk_update, whose CASE expression over every field and row cost the
    worker more CPU than the rows' own writes (bench pipeline --profile).
    """
    if not analyses:
        return
    if connection.vendor != "postgresql":
        for analysis in analyses:
            Analysis.objects.filter(pk=analysis.pk).update(
                **{name: getattr(analysis, name) for name in fields}
            )
        return
    meta = Analysis._meta
    columns = [meta.get_field(name) for name in fields]
    quote = connection.ops.quote_name
    # Each value cast to its column's type: VALUES alone would guess text for all.
    casts = [f"%s::{meta.pk.db_type(connection)}"] + [
        f"%s::{field.db_type(connection)}" for field in columns
    ]
    row_sql = "(" + ", ".join(casts) + ")"
    params: list[Any] = []
    for analysis in analyses:
        params.append(analysis.pk)
        params.extend(
            field.get_db_prep_save(getattr(analysis, field.attname), connection)
            for field in columns
        )
    names = ", ".join(quote(field.column) for field in columns)
    assignments = ", ".join(
        f"{quote(field.column)} = v.{quote(field.column)}" for field in columns
    )
    table, pk = quote(meta.db_table), quote(meta.pk.column)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET {assignments} "
            f"FROM (VALUES {', '.join([row_sql] * len(analyses))}) "
            f"AS v({pk}, {names}) WHERE {table}.{pk} = v.{pk}",
            params,
        )


def _store_artifacts(analysis: Analysis, artifacts: dict[str, bytes]) -> None:
    for kind in ARTIFACT_KINDS:
        field = getattr(analysis, kind)
        content = artifacts.get(kind)
        if content is None:
            # A composite cached from an earlier result would show the wrong picture,
            # and a withheld result keeps none of an earlier run's files.
            if field and (kind in COMPOSITE_KINDS or analysis.withheld):
                field.delete(save=False)
            continue
        if field:
            field.delete(save=False)
        # A worker killed after storing these files but before its commit left them
        # under the same names: replace them, so that an analysis has one set.
        # (Deleting a name that is not there does nothing: no exists() first.)
        target = field.field.generate_filename(analysis, _artifact_file_name(kind))
        field.storage.delete(target)
        # Stored under the name made above (FieldFile.save would make it again).
        setattr(
            analysis,
            kind,
            field.storage.save(
                target, ContentFile(content), max_length=field.field.max_length
            ),
        )


def _logits(result: dict[str, Any]) -> list[float] | None:
    raw = result.get("logits")
    if raw is None:
        return None
    logits = [float(v) for v in raw]
    if len(logits) != len(Analysis.Label.values) or not all(
        np.isfinite(v) for v in logits
    ):
        raise ValueError(f"logits must be {len(Analysis.Label.values)} finite numbers")
    return logits


def _record_result(
    analysis: Analysis,
    result: dict[str, Any],
    *,
    calibration: SiteCalibration | None = None,
    model_ood_threshold: float | None = None,
) -> None:
    # Checked here: a bulk update would cut an over-long string to the column's size.
    for key in ("label", "explained_class"):
        value = result.get(key) or ""
        if value and value not in Analysis.Label.values:
            raise ValueError(f"{key} {str(value)[:40]!r} is not a label")
    probabilities = {str(k): float(v) for k, v in dict(result["probabilities"]).items()}
    bbox = result.get("bbox")
    gate_score = result.get("gate_score")
    analysis.status = Status.SUCCEEDED
    analysis.finished_at = timezone.now()
    analysis.error = ""
    analysis.logits = _logits(result)
    analysis.withheld = bool(result.get("withheld") or False)
    analysis.gate_score = None if gate_score is None else float(gate_score)
    analysis.looked_again = bool(result.get("looked_again") or False)
    _record_distribution(analysis, result, threshold=model_ood_threshold)
    if analysis.withheld:
        # Not a breast ultrasound: the model's verdict is kept nowhere it could be
        # shown (the raw logits stay, for the record). The gate's verdict and score say
        # why; an earlier run's calibration or threshold says nothing about it.
        for name in VERDICT_FIELDS:
            setattr(
                analysis, name, "" if name in ("label", "explained_class") else None
            )
        analysis.calibration = None
        analysis.operating_threshold = None
        analysis.ood_rule, analysis.ood_site_threshold = "", None
        return
    analysis.label = str(result["label"])
    analysis.confidence = float(result["confidence"])
    analysis.probabilities = probabilities
    analysis.lesion_area_fraction = float(result["lesion_area_fraction"])
    analysis.bbox = [int(v) for v in bbox] if bbox is not None else None
    if calibration is not None and analysis.logits is not None:
        _set_scores([analysis], _site_calibration(calibration), calibration)
    else:
        _apply_model_operating_point(analysis)


def _site_calibration(calibration: SiteCalibration) -> Any:
    from ml.site_calibration import SiteCalibration as Fitted

    return Fitted.from_dict(calibration.parameters)


def _apply_model_operating_point(analysis: Analysis) -> None:
    """The model's own calibration and the training sites' operating point: suspicious
    when the label is malignant (no threshold of the site's own yet)."""
    analysis.calibration = None
    analysis.operating_threshold = None
    analysis.suspicious = analysis.label == Analysis.Label.MALIGNANT
    _judge_unusual(analysis, site_threshold=None)


def _judge_unusual(analysis: Analysis, *, site_threshold: float | None) -> None:
    """The "unusual for this model" caution by the model's threshold, and the site's own when its
    calibration carries one (ml.site_calibration.is_unusual says why both). A row whose
    score or threshold is unknown keeps the worker's verdict."""
    from ml.site_calibration import is_unusual

    unusual = is_unusual(
        analysis.ood_score,
        model_threshold=analysis.ood_threshold,
        site_threshold=site_threshold,
    )
    if unusual is None:
        analysis.ood_rule = (
            "" if analysis.in_distribution is None else Analysis.OodRule.MODEL
        )
        analysis.ood_site_threshold = None
        return
    analysis.in_distribution = not unusual
    site = site_threshold is not None
    analysis.ood_rule = Analysis.OodRule.SITE if site else Analysis.OodRule.MODEL
    analysis.ood_site_threshold = site_threshold


def _set_scores(
    analyses: Sequence[Analysis],
    fitted: Any,
    calibration: SiteCalibration | None,
) -> None:
    """Show each analysis through `fitted` (recorded as `calibration`; None: the model's
    own), from its stored logits."""
    logits = np.asarray([analysis.logits for analysis in analyses], np.float64)
    probabilities = fitted.probabilities(logits)
    chosen = fitted.labels(logits)
    suspicious = fitted.suspicious(probabilities)
    names = list(Analysis.Label.values)
    for analysis, row, best, flag in zip(
        analyses, probabilities, chosen, suspicious, strict=True
    ):
        analysis.probabilities = {name: float(row[i]) for i, name in enumerate(names)}
        analysis.label = names[int(best)]
        analysis.confidence = float(row[int(best)])
        analysis.suspicious = bool(flag)
        analysis.operating_threshold = fitted.threshold
        analysis.calibration = calibration
        _judge_unusual(
            analysis,
            site_threshold=calibration.ood_site_threshold if calibration else None,
        )


def _ood_threshold(model_version: str) -> float | None:
    """The out-of-distribution threshold of `model_version`'s model.json (None: none).

    The worker loaded its model from this same model.json; the version check in
    ood_threshold keeps a threshold of other weights off its scores."""
    try:
        return ood_threshold(model_version=model_version)
    except ModelVersionUnavailable:
        logger.warning("no out-of-distribution threshold for model %s", model_version)
        return None


def _record_distribution(
    analysis: Analysis, result: dict[str, Any], *, threshold: float | None
) -> None:
    """The out-of-distribution verdict, its score and `threshold` (its model's), and the
    class Grad-CAM explains. Results of models without out-of-distribution statistics
    leave them empty."""
    in_distribution = result.get("in_distribution")
    score = result.get("ood_score")
    analysis.in_distribution = (
        None if in_distribution is None else bool(in_distribution)
    )
    analysis.ood_score = None if score is None else float(score)
    analysis.ood_threshold = None if analysis.in_distribution is None else threshold
    analysis.explained_class = str(result.get("explained_class") or "")


RESCORED_FIELDS = (
    "label",
    "confidence",
    "probabilities",
    "suspicious",
    "operating_threshold",
    "calibration",
    "in_distribution",
    "ood_rule",
    "ood_site_threshold",
)


def analyses_rescore(
    *,
    model_version: str,
    calibration: SiteCalibration | None,
    scanner: Scanner | None = None,
    except_scanners: Sequence[Scanner] = (),
    chunk: int = 500,
) -> tuple[int, set[int]]:
    """Show every finished analysis of `model_version` through `calibration` (None: the
    model's own), recomputed from its stored logits without running the network.

    `scanner`: only analyses of scans from that scanner model; `except_scanners`: not
    those (scanner models shown through calibrations of their own).

    Each row's earlier values stay in the audit trail (one change record per row). Rows
    without stored logits (analysed before logits were kept) and withheld rows stay as
    they are. Returns how many rows changed and the ids of their studies, whose
    worklist columns the caller refreshes. Run inside the activation's transaction.
    """
    if calibration is None:
        fitted = model_calibration(model_version=model_version)
        if fitted is None:
            raise ValidationError(
                f"The model's own calibration of {model_version} is unknown (another "
                "model is installed): its results cannot be re-scored to it."
            )
    else:
        fitted = _site_calibration(calibration)
    # Running rows are locked too, in id order as a worker locks its batch: a result
    # being stored while the calibration changes is waited for and then re-scored (the
    # lock sees its committed version), and a worker that stores after this commits
    # reads the new calibration. Filtered here, not in SQL, for that reason.
    rows = (
        Analysis.objects.filter(
            model_version=model_version,
            status__in=(Status.RUNNING, Status.SUCCEEDED),
        )
        .filter(_scanner_scope(scanner, except_scanners))
        .select_for_update(of=("self",))
        .select_related("scan")
        .order_by("pk")
    )
    changed = 0
    studies: set[int] = set()
    for locked in _chunks(rows.iterator(chunk_size=chunk), chunk):
        batch = [
            analysis
            for analysis in locked
            if analysis.status == Status.SUCCEEDED
            and not analysis.withheld
            and analysis.logits is not None
        ]
        if not batch:
            continue
        before = {analysis.pk: _copy(analysis) for analysis in batch}
        _set_scores(batch, fitted, calibration)
        Analysis.objects.bulk_update(batch, list(RESCORED_FIELDS))
        for analysis in batch:
            audit_update(before[analysis.pk], analysis)
            studies.add(analysis.scan.study_id)
        changed += len(batch)
    logger.info(
        "re-scored %d analyses of %s (%s) with calibration %s",
        changed,
        model_version,
        "every scanner" if scanner is None else "one scanner model",
        calibration.pk if calibration else "(the model's own)",
    )
    return changed, studies


def _scanner_scope(scanner: Scanner | None, excluded: Sequence[Scanner]) -> Q:
    scope = Q()
    if scanner is not None:
        scope &= Q(
            scan__scanner_manufacturer=scanner.manufacturer,
            scan__scanner_model=scanner.model,
        )
    for other in excluded:
        scope &= ~Q(
            scan__scanner_manufacturer=other.manufacturer,
            scan__scanner_model=other.model,
        )
    return scope


def _copy(analysis: Analysis) -> Analysis:
    copy = Analysis(
        **{
            f.attname: getattr(analysis, f.attname)
            for f in Analysis._meta.concrete_fields
        }
    )
    copy._state.adding = False
    return copy


def _chunks(items: Iterable[Analysis], size: int) -> Iterable[list[Analysis]]:
    batch: list[Analysis] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def shadow_results_record(
    *, model_version: str, results: Sequence[tuple[int, dict[str, Any] | str]]
) -> None:
    """Keep what the shadow version gave on analyses' scans: (analysis id, its result
    dict with "mask_dice" added, or the error text). Never the analyses' own result; a
    second run on the same analysis (a redelivered message) keeps the first."""
    rows = []
    for analysis_id, outcome in results:
        if isinstance(outcome, str):
            rows.append(
                ShadowResult(
                    analysis_id=analysis_id,
                    model_version=model_version,
                    error=outcome[:2000],
                )
            )
            continue
        withheld = bool(outcome.get("withheld") or False)
        in_distribution = outcome.get("in_distribution")
        dice = outcome.get("mask_dice")
        rows.append(
            ShadowResult(
                analysis_id=analysis_id,
                model_version=model_version,
                label="" if withheld else str(outcome.get("label") or ""),
                probabilities=None
                if withheld
                else {
                    str(k): float(v)
                    for k, v in dict(outcome.get("probabilities") or {}).items()
                },
                logits=_logits(outcome),
                lesion_area_fraction=None
                if withheld or outcome.get("lesion_area_fraction") is None
                else float(outcome["lesion_area_fraction"]),
                withheld=withheld,
                in_distribution=None
                if in_distribution is None
                else bool(in_distribution),
                mask_dice=None if dice is None else float(dice),
            )
        )
    for row in rows:
        if row.label and row.label not in Analysis.Label.values:
            raise ValueError(f"label {row.label[:40]!r} is not a label")
    ShadowResult.objects.bulk_create(rows, ignore_conflicts=True)


def analysis_record_failure(*, analysis_id: int, error: str) -> bool:
    """Mark a running analysis failed with a reason a person can read."""
    updated = Analysis.objects.filter(pk=analysis_id, status=Status.RUNNING).update(
        status=Status.FAILED, finished_at=timezone.now(), error=error[:4000]
    )
    return updated == 1


def analysis_release(
    *,
    analysis_id: int,
    error: str,
    count_attempt: bool = True,
    silent_since: datetime | None = None,
) -> bool:
    """Give a running analysis back to the queue after a transient error.

    Returns True if it was requeued (the caller sends a new message), False if it has
    used up its attempts and is now failed. With count_attempt=False (claimed but never
    run, e.g. a prefetched batch the worker had to drop) the claim is undone instead.
    With silent_since, only if its worker has not stamped a heartbeat since then: a
    worker that proved itself alive meanwhile keeps its analysis.
    """
    max_attempts = settings.ANALYSIS_MAX_ATTEMPTS
    running = Analysis.objects.filter(pk=analysis_id, status=Status.RUNNING)
    if silent_since is not None:
        running = running.filter(
            Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=silent_since)
        )
    requeue = {
        "status": Status.QUEUED,
        "queued_at": timezone.now(),
        "started_at": None,
        "heartbeat_at": None,
        "worker": "",
    }
    if not count_attempt:
        return bool(
            running.filter(attempts__gt=0).update(attempts=F("attempts") - 1, **requeue)
        )
    if running.filter(attempts__lt=max_attempts).update(error=error, **requeue):
        return True
    running.update(
        status=Status.FAILED,
        finished_at=timezone.now(),
        error=f"gave up after {max_attempts} attempts; last error: {error}"[:4000],
    )
    return False


def analyses_heartbeat(*, worker: str) -> int:
    """Mark the analyses this worker process is running as alive now; how many it has.

    The reconciler requeues a running analysis whose heartbeat is older than
    ANALYSIS_STALE_RUNNING_SECONDS, so this must run more often than that.
    """
    return Analysis.objects.filter(status=Status.RUNNING, worker=worker[:255]).update(
        heartbeat_at=timezone.now()
    )


def analysis_requeue(
    *,
    analysis_id: int,
    error: str,
    count_attempt: bool = True,
    backoff: bool = True,
    silent_since: datetime | None = None,
) -> bool:
    """Give a running analysis back to the queue and send its message again.

    The one release-and-resend sequence, for a task that hit a transient error and for
    the reconciler that found a dead worker's row. Returns False when the row was not
    requeued (out of attempts, now failed; or no longer running). With backoff the
    message waits retry_countdown(attempts) seconds; a row that never ran, or whose
    worker died, is not the image's fault and goes at once. Raises when the broker
    refuses the message: the row is then queued without one, which the reconciler
    finds later. silent_since: see analysis_release.
    """
    if not analysis_release(
        analysis_id=analysis_id,
        error=error,
        count_attempt=count_attempt,
        silent_since=silent_since,
    ):
        return False
    countdown = None
    if count_attempt and backoff:
        attempts = Analysis.objects.values_list("attempts", flat=True).get(
            pk=analysis_id
        )
        countdown = retry_countdown(attempts)
    queue.send_analysis(analysis_id, countdown=countdown)
    return True


def retry_countdown(attempts: int) -> int:
    """Exponential backoff in seconds for the next attempt: 5, 10, 20, ... at most 5 min."""
    return min(300, 5 * 2 ** max(0, attempts - 1))
