"""A site's calibration fitted from its own signed reads, activated and rolled back.

Review is the layer that knows the reads; it composes the registry (the versioned
records), analyses (re-scoring history from stored logits) and its own worklist and
agreement counts, so that no lower service calls up. The maths is ml.site_calibration's,
the same the CLI (`python -m ml calibrate`) runs.

Ground truth per scan: the study's biopsy outcome where one is recorded, else the
radiologist's current signed label.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet

from ml.site_calibration import (
    MIN_READS_FOR_SITE_CALIBRATION,
    estimate_prior_em,
    evaluate_site_calibration,
)
from ml.site_calibration import SiteCalibration as Fitted
from portal.analyses.modelinfo import (
    ModelVersionUnavailable,
    model_calibration,
    training_class_prior,
)
from portal.analyses.models import Analysis
from portal.analyses.services import analyses_rescore
from portal.clinical.models import Study
from portal.registry.models import CalibrationActivation, SiteCalibration
from portal.registry.selectors import site_calibration_active
from portal.registry.services import (
    calibration_activate,
    calibration_rollback_target,
    site_calibration_create,
)
from portal.review.selectors import current_signed_reviews
from portal.review.services import agreement_counts_rebuild, studies_review_refresh

logger = logging.getLogger(__name__)

LABELS = tuple(Analysis.Label.values)
# A case-mix difference worth a warning: the site's estimated malignant prevalence
# differs from training's by more than this (absolute), or by a factor of 2.
PREVALENCE_WARNING_DIFFERENCE = 0.15


@dataclass(frozen=True)
class SignedReads:
    logits: np.ndarray  # (n, 3) raw class logits
    labels: np.ndarray  # (n,) indices into LABELS
    groups: np.ndarray  # (n,) patient ids: cross-validation keeps a patient together
    from_pathology: int  # how many labels came from a biopsy outcome

    @property
    def n(self) -> int:
        return len(self.labels)


def signed_reads(*, model_version: str) -> SignedReads:
    """The site's ground truth for `model_version`'s analyses: one row per scan with a
    current signed reading of an analysis of that version with stored logits (withheld
    scans excluded: they are not breast ultrasound)."""
    rows = (
        current_signed_reviews()
        .filter(
            analysis__model_version=model_version,
            analysis__status=Analysis.Status.SUCCEEDED,
            analysis__withheld=False,
            analysis__logits__isnull=False,
        )
        .order_by("scan_id", "-version")
        .values_list(
            "scan_id",
            "label",
            "analysis__logits",
            "scan__study__pathology",
            "scan__study__patient_id",
        )
    )
    seen: set[int] = set()
    logits, labels, groups = [], [], []
    from_pathology = 0
    for scan_id, label, raw, pathology, patient_id in rows:
        if scan_id in seen:
            continue
        seen.add(scan_id)
        if pathology:
            from_pathology += 1
            label = pathology
        logits.append(raw)
        labels.append(LABELS.index(label))
        groups.append(patient_id)
    return SignedReads(
        logits=np.asarray(logits, np.float64).reshape(-1, len(LABELS)),
        labels=np.asarray(labels, np.int64),
        groups=np.asarray(groups),
        from_pathology=from_pathology,
    )


def _in_use(model_version: str) -> Fitted | None:
    """The calibration analyses are shown with now, as ml's object (the baseline of a
    new fit's before/after); None when unknown (another model installed)."""
    active = site_calibration_active(model_version=model_version)
    if active is not None:
        return Fitted.from_dict(active.parameters)
    try:
        return model_calibration(model_version=model_version)
    except ModelVersionUnavailable:
        return None


def site_calibration_fit(
    *,
    model_version: str,
    target_sensitivity: float,
    created_by: AbstractBaseUser,
) -> SiteCalibration:
    """Fit temperature, class offsets and the operating point on the site's signed reads,
    with the cross-validated before/after; recorded as the next version, not active."""
    if not 0.5 <= target_sensitivity < 1.0:
        raise ValidationError(
            "The target malignant sensitivity must be at least 0.5 and below 1."
        )
    reads = signed_reads(model_version=model_version)
    if reads.n < MIN_READS_FOR_SITE_CALIBRATION:
        raise ValidationError(
            f"A site calibration needs at least {MIN_READS_FOR_SITE_CALIBRATION} signed "
            f"reads of this model's analyses; there are {reads.n}."
        )
    try:
        evaluation = evaluate_site_calibration(
            reads.logits,
            reads.labels,
            groups=reads.groups,
            target_sensitivity=target_sensitivity,
            baseline=_in_use(model_version),
        )
    except ValueError as exc:
        raise ValidationError(f"The calibration could not be fitted: {exc}") from None
    parameters = evaluation.pop("calibration")
    evaluation["from_pathology"] = reads.from_pathology
    calibration = site_calibration_create(
        model_version=model_version,
        parameters=parameters,
        evaluation=evaluation,
        target_sensitivity=target_sensitivity,
        reads=reads.n,
        created_by=created_by,
    )
    logger.info(
        "site calibration %s fitted on %d reads of %s",
        calibration.pk,
        reads.n,
        model_version,
    )
    return calibration


def _switch(
    *,
    model_version: str,
    calibration: SiteCalibration | None,
    user: AbstractBaseUser,
    reason: str,
) -> CalibrationActivation:
    activation = calibration_activate(
        model_version=model_version,
        calibration=calibration,
        activated_by=user,
        reason=reason,
    )
    rescored, study_ids = analyses_rescore(
        model_version=model_version, calibration=calibration
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
    """Show analyses of the calibration's model through it from now on, and re-score
    its history from the stored logits (earlier values stay in the audit trail)."""
    return _switch(
        model_version=calibration.model_version,
        calibration=calibration,
        user=user,
        reason=reason or "activated",
    )


@transaction.atomic
def site_calibration_rollback(
    *, model_version: str, user: AbstractBaseUser
) -> CalibrationActivation:
    """Return to the calibration active before the current one (or the model's own)."""
    target = calibration_rollback_target(model_version=model_version)
    return _switch(
        model_version=model_version,
        calibration=target,
        user=user,
        reason="rolled back",
    )


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
