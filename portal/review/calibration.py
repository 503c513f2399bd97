"""A site's calibration fitted from its own signed reads, activated and rolled back.

Review is the layer that knows the reads; it composes the registry (the versioned
records), analyses (re-scoring history from stored logits) and its own worklist and
agreement counts, so that no lower service calls up. The maths is ml.site_calibration's,
the same the CLI (`python -m ml calibrate`) runs.

Ground truth per scan (review.selectors.with_ground_truth, the training export's rule
too): the biopsy outcome of the scan's lesion where one is recorded, else the study's,
else the radiologist's current signed label.
"""

from __future__ import annotations

import datetime
import logging
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from ml.site_calibration import (
    MIN_READS_FOR_SITE_CALIBRATION,
    estimate_prior_em,
    evaluate_site_calibration,
    is_unusual,
    site_ood_threshold,
)
from ml.site_calibration import SiteCalibration as Fitted
from portal.analyses.modelinfo import (
    ModelVersionUnavailable,
    model_calibration,
    training_class_prior,
)
from portal.analyses.models import Analysis
from portal.analyses.queue import app as celery_app
from portal.analyses.services import analyses_rescore
from portal.clinical.models import Study
from portal.clinical.scanners import SITE, Scanner
from portal.registry.models import CalibrationActivation, SiteCalibration
from portal.registry.selectors import (
    scanners_with_own_calibration,
    site_calibration_active,
    site_calibration_in_use,
)
from portal.registry.services import (
    calibration_activate,
    calibration_rollback_target,
    site_calibration_create,
)
from portal.review.models import CalibrationFit
from portal.review.selectors import (
    LESION_BIOPSY,
    STUDY_BIOPSY,
    current_signed_reviews,
    with_ground_truth,
)
from portal.review.services import agreement_counts_rebuild, studies_review_refresh

logger = logging.getLogger(__name__)

LABELS = tuple(Analysis.Label.values)
# A case-mix difference worth a warning: the site's estimated malignant prevalence
# differs from training's by more than this (absolute), or by a factor of 2.
PREVALENCE_WARNING_DIFFERENCE = 0.15
FIT_SITE_CALIBRATION = "workers.tasks.fit_site_calibration"


@dataclass(frozen=True)
class SignedReads:
    logits: np.ndarray  # (n, 3) raw class logits
    labels: np.ndarray  # (n,) indices into LABELS
    groups: np.ndarray  # (n,) patient ids: cross-validation keeps a patient together
    from_pathology: int  # how many labels came from a biopsy outcome (lesion or study)
    from_lesion_pathology: int  # of those, how many from the scan's lesion's outcome
    ood_scores: np.ndarray  # (n,) out-of-distribution scores, NaN where none

    @property
    def n(self) -> int:
        return len(self.labels)


def _scanner_filter(scanner: Scanner, prefix: str = "scan__") -> Q:
    """Scans of one scanner model; the site (no scanner named): every scan."""
    if scanner.is_site:
        return Q()
    return Q(
        **{
            f"{prefix}scanner_manufacturer": scanner.manufacturer,
            f"{prefix}scanner_model": scanner.model,
        }
    )


def _signed_rows(model_version: str) -> QuerySet:
    return current_signed_reviews().filter(
        analysis__model_version=model_version,
        analysis__status=Analysis.Status.SUCCEEDED,
        analysis__withheld=False,
        analysis__logits__isnull=False,
    )


def signed_reads(*, model_version: str, scanner: Scanner = SITE) -> SignedReads:
    """The site's ground truth for `model_version`'s analyses: one row per scan with a
    current signed reading of an analysis of that version with stored logits (withheld
    scans excluded: they are not breast ultrasound); of one scanner model's scans when
    one is named."""
    rows = (
        with_ground_truth(_signed_rows(model_version).filter(_scanner_filter(scanner)))
        .order_by("scan_id", "-version")
        .values_list(
            "scan_id",
            "truth",
            "truth_origin",
            "analysis__logits",
            "scan__study__patient_id",
            "analysis__ood_score",
        )
    )
    seen: set[int] = set()
    logits, labels, groups, scores = [], [], [], []
    origins: Counter[str] = Counter()
    for scan_id, label, origin, raw, patient_id, score in rows:
        if scan_id in seen:
            continue
        seen.add(scan_id)
        origins[origin] += 1
        logits.append(raw)
        labels.append(LABELS.index(label))
        groups.append(patient_id)
        scores.append(np.nan if score is None else score)
    return SignedReads(
        logits=np.asarray(logits, np.float64).reshape(-1, len(LABELS)),
        labels=np.asarray(labels, np.int64),
        groups=np.asarray(groups),
        from_pathology=origins[LESION_BIOPSY] + origins[STUDY_BIOPSY],
        from_lesion_pathology=origins[LESION_BIOPSY],
        ood_scores=np.asarray(scores, np.float64),
    )


@dataclass(frozen=True)
class ScannerReads:
    scanner: Scanner
    reads: int

    @property
    def enough(self) -> bool:
        return self.reads >= MIN_READS_FOR_SITE_CALIBRATION


def signed_reads_by_scanner(*, model_version: str) -> list[ScannerReads]:
    """The site's signed reads of `model_version`, in all and per scanner model named by
    the scans' DICOM headers (most reads first): the choices of a fit."""
    counts = (
        _signed_rows(model_version)
        .values("scan__scanner_manufacturer", "scan__scanner_model")
        .annotate(reads=Count("scan", distinct=True))
    )
    scanners = [
        ScannerReads(
            Scanner(row["scan__scanner_manufacturer"], row["scan__scanner_model"]),
            row["reads"],
        )
        for row in counts
    ]
    named = sorted(
        (s for s in scanners if not s.scanner.is_site),
        key=lambda s: (-s.reads, s.scanner.manufacturer, s.scanner.model),
    )
    return [ScannerReads(SITE, sum(s.reads for s in scanners)), *named]


def _in_use(model_version: str, scanner: Scanner = SITE) -> Fitted | None:
    """The calibration analyses of `scanner` are shown with now, as ml's object (the
    baseline of a new fit's before/after); None when unknown (another model installed)."""
    active = site_calibration_in_use(model_version=model_version, scanner=scanner)
    if active is not None:
        return Fitted.from_dict(active.parameters)
    return _model_calibration(model_version)


def _model_calibration(model_version: str) -> Fitted | None:
    """The installed model's own calibration, which a site's fit corrects (its prior);
    None when the model is not installed here."""
    try:
        return model_calibration(model_version=model_version)
    except ModelVersionUnavailable:
        return None


def _check_fit(*, target_sensitivity: float, scanner: Scanner, reads: int) -> None:
    if not 0.5 <= target_sensitivity < 1.0:
        raise ValidationError(
            "The target malignant sensitivity must be at least 0.5 and below 1."
        )
    if reads < MIN_READS_FOR_SITE_CALIBRATION:
        if scanner.is_site:
            raise ValidationError(
                f"A site calibration needs at least {MIN_READS_FOR_SITE_CALIBRATION} "
                f"signed reads of this model's analyses; there are {reads}."
            )
        raise ValidationError(
            f"A calibration for {scanner.name} needs at least "
            f"{MIN_READS_FOR_SITE_CALIBRATION} signed reads of this model's analyses "
            f"of its scans; there are {reads}. Fit a site-wide calibration instead: "
            "it covers this scanner's scans too."
        )


def _fitted(
    *, model_version: str, target_sensitivity: float, scanner: Scanner
) -> dict[str, Any]:
    """Fit temperature, class offsets and the operating point on the site's signed reads
    (one scanner model's, when named), with the cross-validated before/after and the
    site's own out-of-distribution threshold: site_calibration_create's arguments but
    who and which job. Reads only: the bootstrap takes its time outside any lock."""
    reads = signed_reads(model_version=model_version, scanner=scanner)
    _check_fit(target_sensitivity=target_sensitivity, scanner=scanner, reads=reads.n)
    try:
        evaluation = evaluate_site_calibration(
            reads.logits,
            reads.labels,
            groups=reads.groups,
            target_sensitivity=target_sensitivity,
            baseline=_in_use(model_version, scanner),
            prior=_model_calibration(model_version),
        )
    except ValueError as exc:
        raise ValidationError(f"The calibration could not be fitted: {exc}") from None
    parameters = evaluation.pop("calibration")
    evaluation["from_pathology"] = reads.from_pathology
    evaluation["from_lesion_pathology"] = reads.from_lesion_pathology
    unusual = unusual_shares(model_version=model_version, scanner=scanner, reads=reads)
    evaluation["unusual"] = unusual
    return {
        "model_version": model_version,
        "parameters": parameters,
        "evaluation": evaluation,
        "target_sensitivity": target_sensitivity,
        "reads": reads.n,
        "scanner": scanner,
        "ood_site_threshold": unusual["site_threshold"],
    }


def _record(fitted: dict[str, Any], **who: Any) -> SiteCalibration:
    calibration = site_calibration_create(**fitted, **who)
    logger.info(
        "site calibration %s fitted on %d reads of %s",
        calibration.pk,
        calibration.reads,
        calibration.model_version,
    )
    return calibration


def site_calibration_fit(
    *,
    model_version: str,
    target_sensitivity: float,
    created_by: AbstractBaseUser,
    scanner: Scanner = SITE,
) -> SiteCalibration:
    """Fit a calibration on the site's signed reads (see _fitted) and record it as the
    next version, not active."""
    fitted = _fitted(
        model_version=model_version,
        target_sensitivity=target_sensitivity,
        scanner=scanner,
    )
    return _record(fitted, created_by=created_by)


def unusual_shares(
    *,
    model_version: str,
    scanner: Scanner,
    reads: SignedReads,
    limit: int = 20000,
) -> dict[str, Any]:
    """The site's own out-of-distribution threshold from its signed scans' scores (once
    there are SITE_OOD_MIN_READS of them), and the share of the site's scans (the
    newest `limit` finished, not withheld, in scope) cautioned "unusual" by the model's
    threshold alone (before) and with the site's too (after)."""
    scores = reads.ood_scores[np.isfinite(reads.ood_scores)]
    enough = scores.size >= settings.SITE_OOD_MIN_READS
    percentile = settings.SITE_OOD_PERCENTILE
    site_threshold = (
        site_ood_threshold(scores, percentile=percentile) if enough else None
    )
    rows = list(
        Analysis.objects.filter(
            _scanner_filter(scanner),
            model_version=model_version,
            status=Analysis.Status.SUCCEEDED,
            withheld=False,
            ood_score__isnull=False,
            ood_threshold__isnull=False,
        )
        .order_by("-finished_at", "-id")
        .values_list("ood_score", "ood_threshold")[:limit]
    )
    before = [is_unusual(score, model_threshold=t) for score, t in rows]
    after = [
        is_unusual(score, model_threshold=t, site_threshold=site_threshold)
        for score, t in rows
    ]
    return {
        "reference_reads": int(scores.size),
        "min_reads": settings.SITE_OOD_MIN_READS,
        "percentile": percentile,
        "site_threshold": site_threshold,
        "scans": len(rows),
        "before": sum(before) / len(rows) if rows else None,
        "after": sum(after) / len(rows) if rows else None,
    }


def _switch(
    *,
    model_version: str,
    calibration: SiteCalibration | None,
    user: AbstractBaseUser,
    reason: str,
    scanner: Scanner = SITE,
) -> CalibrationActivation:
    activation = calibration_activate(
        model_version=model_version,
        calibration=calibration,
        activated_by=user,
        reason=reason,
        scanner=scanner,
    )
    if scanner.is_site:
        # Scanner models with calibrations of their own keep them.
        rescored, study_ids = analyses_rescore(
            model_version=model_version,
            calibration=calibration,
            except_scanners=scanners_with_own_calibration(model_version=model_version),
        )
    else:
        # Without one of its own, the scanner model's scans fall back to the site's.
        rescored, study_ids = analyses_rescore(
            model_version=model_version,
            calibration=calibration
            or site_calibration_active(model_version=model_version),
            scanner=scanner,
        )
    activation.rescored = rescored
    activation.save(update_fields=["rescored"])
    # Labels and suspicious flags changed: the worklist order and the agreement
    # monitor follow what is shown now.
    studies_review_refresh(studies=Study.objects.filter(pk__in=study_ids))
    agreement_counts_rebuild()
    return activation


@transaction.atomic
def site_calibration_activate(
    *, calibration: SiteCalibration, user: AbstractBaseUser, reason: str = ""
) -> CalibrationActivation:
    """Show analyses of the calibration's model (of its scanner model's scans, when it
    was fitted for one) through it from now on, and re-score their history from the
    stored logits (earlier values stay in the audit trail)."""
    return _switch(
        model_version=calibration.model_version,
        calibration=calibration,
        user=user,
        reason=reason or "activated",
        scanner=calibration.scanner,
    )


@transaction.atomic
def site_calibration_rollback(
    *, model_version: str, user: AbstractBaseUser, scanner: Scanner = SITE
) -> CalibrationActivation:
    """Return to the calibration active before the current one for `scanner`'s scope
    (site-wide: or the model's own; a scanner model: or the site's)."""
    target = calibration_rollback_target(model_version=model_version, scanner=scanner)
    return _switch(
        model_version=model_version,
        calibration=target,
        user=user,
        reason="rolled back",
        scanner=scanner,
    )


# --- fitting in a worker ----------------------------------------------------------------


@transaction.atomic
def calibration_fit_request(
    *,
    model_version: str,
    target_sensitivity: float,
    requested_by: AbstractBaseUser,
    scanner: Scanner = SITE,
) -> CalibrationFit:
    """Queue a fit (run by workers.tasks.fit_site_calibration once this commits).

    Refused at once, with the reason, when the target is out of range or there are too
    few signed reads in scope (the worker checks again on the reads it then finds)."""
    reads = signed_reads_count(model_version=model_version, scanner=scanner)
    _check_fit(target_sensitivity=target_sensitivity, scanner=scanner, reads=reads)
    fit = CalibrationFit.objects.create(
        model_version=model_version,
        scanner_manufacturer=scanner.manufacturer,
        scanner_model=scanner.model,
        target_sensitivity=target_sensitivity,
        requested_by=requested_by,
    )
    _send_on_commit(fit.pk)
    return fit


def signed_reads_count(*, model_version: str, scanner: Scanner = SITE) -> int:
    return (
        _signed_rows(model_version)
        .filter(_scanner_filter(scanner))
        .values("scan_id")
        .distinct()
        .count()
    )


def _send_on_commit(fit_id: int) -> None:
    transaction.on_commit(lambda: _send_or_mark_unsent(fit_id))


def _send_or_mark_unsent(fit_id: int) -> None:
    try:
        celery_app.send_task(
            FIT_SITE_CALIBRATION,
            args=[fit_id],
            queue=settings.CELERY_CALIBRATION_QUEUE,
        )
    except Exception:
        # The row is committed and stays; an administrator runs it again once the
        # broker is back (nothing is lost, nothing runs twice: the claim decides).
        logger.warning("calibration fit %s could not be queued", fit_id, exc_info=True)
        _fit_change(
            fit_id,
            Q(status=CalibrationFit.Status.QUEUED),
            status=CalibrationFit.Status.FAILED,
            finished_at=timezone.now(),
            error="The fit could not be queued (the task queue was unreachable). "
            "Run it again.",
        )


@transaction.atomic
def _fit_change(fit_id: int, expected: Q, **changes: Any) -> CalibrationFit | None:
    """Compare-and-set on the job row: when the fit is as `expected`, lock it and make
    the changes (a callable value is given the row as it was); None when it is not.

    Saved, not updated in bulk, so that django-auditlog records every status change
    (and every claim) like any other change of the row."""
    fit = CalibrationFit.objects.select_for_update().filter(expected, pk=fit_id).first()
    if fit is None:
        return None
    for name, value in changes.items():
        setattr(fit, name, value(fit) if callable(value) else value)
    fit.save(update_fields=list(changes))
    return fit


def _stale_before() -> datetime.datetime:
    return timezone.now() - datetime.timedelta(
        seconds=settings.CALIBRATION_FIT_STALE_SECONDS
    )


def _held(claim: str | None) -> Q:
    """A running fit, held by `claim` when one is named."""
    running = Q(status=CalibrationFit.Status.RUNNING)
    return running & Q(claim=claim) if claim else running


def calibration_fit_claim(*, fit_id: int) -> str | None:
    """Compare-and-set queued -> running (or a running one whose worker was lost long
    ago); returns the claim, the token the outcome is recorded under. None when someone
    else has it or it is finished."""
    Status = CalibrationFit.Status
    claimable = Q(status=Status.QUEUED) | Q(
        status=Status.RUNNING, started_at__lt=_stale_before()
    )
    claim = uuid.uuid4().hex
    claimed = _fit_change(
        fit_id,
        claimable,
        status=Status.RUNNING,
        started_at=timezone.now(),
        error="",
        claim=claim,
    )
    return claim if claimed is not None else None


class _ClaimLost(Exception):
    """The fit was claimed again (its worker given up for lost) while this run fitted."""


def calibration_fit_run(
    *, fit_id: int, claim: str | None = None
) -> CalibrationFit | None:
    """Run a fit under `claim` (claimed here when not given); its outcome is on the row
    (the calibration, or the reason it was refused). None when the fit was not claimable
    (a duplicate message), or was claimed again by another run while this one fitted
    (that run's outcome stands).

    Passing faults (database, network) propagate, the row still running and no
    calibration recorded: the task hands it back with calibration_fit_requeue under the
    same claim (so a run given up for lost cannot requeue a fit another run now holds)
    and tries again."""
    if claim is None:
        claim = calibration_fit_claim(fit_id=fit_id)
    if claim is None:
        logger.info("calibration fit %s is not claimable; nothing to do", fit_id)
        return None
    fit = CalibrationFit.objects.select_related("requested_by").get(pk=fit_id)
    try:
        fitted = _fitted(
            model_version=fit.model_version,
            target_sensitivity=fit.target_sensitivity,
            scanner=fit.scanner,
        )
        # The calibration is recorded under the row's lock and only while the claim is
        # still this run's, and together with the row's outcome: a run that lost its
        # claim, or a fault between the two, records nothing.
        with transaction.atomic():
            if _fit_change(fit_id, _held(claim)) is None:
                raise _ClaimLost
            calibration = _record(
                fitted, created_by=fit.requested_by, job=f"calibration-fit-{fit_id}"
            )
            _fit_change(
                fit_id,
                _held(claim),
                status=CalibrationFit.Status.SUCCEEDED,
                finished_at=timezone.now(),
                calibration=calibration,
                error="",
            )
    except ValidationError as exc:
        if not calibration_fit_fail(
            fit_id=fit_id, error=" ".join(exc.messages), claim=claim
        ):
            return None
    except _ClaimLost:
        logger.info(
            "calibration fit %s was claimed again while it ran; this run's result is "
            "dropped",
            fit_id,
        )
        return None
    fit.refresh_from_db()
    return fit


def calibration_fit_requeue(
    *, fit_id: int, error: str, claim: str | None = None
) -> bool:
    """A running fit (held by `claim`, when named) that met a passing fault goes back
    to queued (an attempt counted)."""
    return (
        _fit_change(
            fit_id,
            _held(claim),
            status=CalibrationFit.Status.QUEUED,
            attempts=lambda fit: fit.attempts + 1,
            error=error[:4000],
        )
        is not None
    )


def calibration_fit_fail(*, fit_id: int, error: str, claim: str | None = None) -> bool:
    """A fit that cannot succeed (too few reads) or has run out of retries: failed, with
    the reason shown on the page; an administrator may run it again. With `claim`, only
    while that run still holds it."""
    expected = (
        _held(claim)
        if claim
        else Q(status__in=(CalibrationFit.Status.RUNNING, CalibrationFit.Status.QUEUED))
    )
    return (
        _fit_change(
            fit_id,
            expected,
            status=CalibrationFit.Status.FAILED,
            finished_at=timezone.now(),
            error=error[:4000],
        )
        is not None
    )


@transaction.atomic
def calibration_fit_retry(*, fit: CalibrationFit) -> CalibrationFit:
    """Run a failed fit (or one whose worker was lost) again: queued, sent on commit."""
    Status = CalibrationFit.Status
    retryable = Q(status=Status.FAILED) | Q(
        status=Status.RUNNING, started_at__lt=_stale_before()
    )
    queued = _fit_change(
        fit.pk,
        retryable,
        status=Status.QUEUED,
        error="",
        started_at=None,
        finished_at=None,
        claim="",
    )
    if queued is None:
        raise ValidationError("This fit is not failed: there is nothing to run again.")
    _send_on_commit(queued.pk)
    return queued


# --- case mix ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseMix:
    analyses: int
    site_prior: dict[str, float] | None
    training_prior: dict[str, float] | None
    warning: bool

    @property
    def site_malignant(self) -> float | None:
        return None if self.site_prior is None else self.site_prior["malignant"]

    @property
    def training_malignant(self) -> float | None:
        return None if self.training_prior is None else self.training_prior["malignant"]


def _unlabeled(model_version: str) -> QuerySet[Analysis]:
    return Analysis.objects.filter(
        model_version=model_version,
        status=Analysis.Status.SUCCEEDED,
        withheld=False,
        logits__isnull=False,
    )


def case_mix(*, model_version: str, limit: int = 20000) -> CaseMix:
    """The site's class prevalence estimated by EM from its analyses' posteriors
    (Saerens et al. 2002), without labels, beside training's.

    The posteriors are the model's own calibration of the stored logits (the prior
    they were calibrated under is training's); the newest `limit` analyses are read.
    """
    training = training_class_prior(model_version=model_version)
    try:
        own = model_calibration(model_version=model_version)
    except ModelVersionUnavailable:
        own = None
    logits = list(
        _unlabeled(model_version)
        .order_by("-finished_at", "-id")
        .values_list("logits", flat=True)[:limit]
    )
    if not logits or training is None or own is None:
        return CaseMix(
            analyses=len(logits),
            site_prior=None,
            training_prior=dict(zip(LABELS, training, strict=True))
            if training
            else None,
            warning=False,
        )
    posteriors = own.probabilities(np.asarray(logits, np.float64))
    estimated = estimate_prior_em(posteriors, training)
    site = {label: float(v) for label, v in zip(LABELS, estimated, strict=True)}
    train = dict(zip(LABELS, training, strict=True))
    difference = abs(site["malignant"] - train["malignant"])
    ratio = max(site["malignant"], 1e-9) / max(train["malignant"], 1e-9)
    return CaseMix(
        analyses=len(logits),
        site_prior=site,
        training_prior=train,
        warning=difference > PREVALENCE_WARNING_DIFFERENCE or not 0.5 <= ratio <= 2.0,
    )


@dataclass(frozen=True)
class UnusualRule:
    rule: str  # Analysis.OodRule value
    title: str
    judged: int
    unusual: int

    @property
    def share(self) -> float | None:
        return self.unusual / self.judged if self.judged else None


def unusual_by_rule(*, model_version: str) -> list[UnusualRule]:
    """How many of the site's finished, not withheld analyses of `model_version` each
    rule judged, and how many it found "unusual for this model" (agreement monitor)."""
    rows = (
        Analysis.objects.filter(
            model_version=model_version,
            status=Analysis.Status.SUCCEEDED,
            withheld=False,
        )
        .exclude(ood_rule="")
        .values("ood_rule")
        .annotate(
            judged=Count("pk"),
            unusual=Count("pk", filter=Q(in_distribution=False)),
        )
    )
    counts = {row["ood_rule"]: row for row in rows}
    return [
        UnusualRule(
            rule=rule.value,
            title=str(rule.label),
            judged=counts.get(rule.value, {}).get("judged", 0),
            unusual=counts.get(rule.value, {}).get("unusual", 0),
        )
        for rule in Analysis.OodRule
    ]


def calibration_summary(evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the before/after table: measure, before, after, each with its interval."""
    before, after = evaluation.get("before") or {}, evaluation.get("after") or {}
    rows = []
    for key, title in (
        ("ece", "ECE (lower is better)"),
        ("recall_normal", "Recall, normal"),
        ("recall_benign", "Recall, benign"),
        ("recall_malignant", "Recall, malignant"),
        ("sensitivity", "Malignant sensitivity at the operating point"),
        ("specificity", "Specificity at the operating point"),
    ):
        rows.append(
            {
                "key": key,
                "title": title,
                "before": before.get(key),
                "before_interval": (before.get("intervals") or {}).get(key),
                "after": after.get(key),
                "after_interval": (after.get("intervals") or {}).get(key),
            }
        )
    return rows


def reliability_svg(evaluation: dict[str, Any]) -> dict[str, Any] | None:
    """Points of an inline SVG reliability diagram (before and after), 0-1 on both axes."""
    size, pad = 260, 30
    span = size - 2 * pad

    def points(side: str) -> list[dict[str, float]]:
        out = []
        for row in (evaluation.get(side) or {}).get("reliability") or []:
            if row.get("count") and row.get("confidence") is not None:
                out.append(
                    {
                        "x": round(pad + row["confidence"] * span, 1),
                        "y": round(size - pad - row["accuracy"] * span, 1),
                        "count": row["count"],
                    }
                )
        return out

    before, after = points("before"), points("after")
    if not before and not after:
        return None
    return {
        "size": size,
        "pad": pad,
        "far": size - pad,
        "before": " ".join(f"{p['x']},{p['y']}" for p in before),
        "after": " ".join(f"{p['x']},{p['y']}" for p in after),
        "before_points": before,
        "after_points": after,
    }
