"""Writes to the registry. A calibration is inserted once and never changed; which one
is in use changes only by adding an activation row (rollback is an activation too).

Re-scoring the analyses a new calibration applies to belongs to the layers above
(analyses keeps the results, review composes the two): nothing here calls up.
"""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max

from portal.clinical.scanners import SITE, Scanner
from portal.registry.models import CalibrationActivation, SiteCalibration
from portal.registry.selectors import (
    calibration_activation_latest,
    calibration_activations,
)

logger = logging.getLogger(__name__)


@transaction.atomic
def site_calibration_create(
    *,
    model_version: str,
    parameters: dict[str, Any],
    evaluation: dict[str, Any],
    target_sensitivity: float,
    reads: int,
    created_by: AbstractBaseUser,
    scanner: Scanner = SITE,
    ood_site_threshold: float | None = None,
) -> SiteCalibration:
    """Record a fitted calibration as the next version for its model (not active yet);
    versions are numbered per model version, whichever scanner model they are for."""
    if not 0.0 < target_sensitivity < 1.0:
        raise ValidationError("The target sensitivity must lie between 0 and 1.")
    # Locks the model version's rows so that two fits cannot take the same number.
    latest = (
        SiteCalibration.objects.select_for_update()
        .filter(model_version=model_version)
        .aggregate(latest=Max("version"))["latest"]
    )
    calibration = SiteCalibration.objects.create(
        model_version=model_version,
        version=(latest or 0) + 1,
        parameters=parameters,
        evaluation=evaluation,
        target_sensitivity=target_sensitivity,
        reads=reads,
        created_by=created_by,
        scanner_manufacturer=scanner.manufacturer,
        scanner_model=scanner.model,
        ood_site_threshold=ood_site_threshold,
    )
    logger.info(
        "site calibration %s (version %s) recorded", calibration.pk, calibration.version
    )
    return calibration


@transaction.atomic
def calibration_activate(
    *,
    model_version: str,
    calibration: SiteCalibration | None,
    activated_by: AbstractBaseUser,
    reason: str = "",
    scanner: Scanner = SITE,
) -> CalibrationActivation:
    """Make `calibration` the one analyses of `model_version` from `scanner` (the whole
    site by default) are shown with from now on. None: the model's own (site-wide), the
    site's (a scanner model)."""
    if calibration is not None and calibration.model_version != model_version:
        raise ValidationError(
            "This calibration was fitted on another model version's output."
        )
    if calibration is not None and calibration.scanner != scanner:
        raise ValidationError(
            f"This calibration was fitted for {calibration.scanner.name}, not for "
            f"{scanner.name}."
        )
    # Serialises activations of one model version: the latest row is what is active.
    list(
        CalibrationActivation.objects.select_for_update()
        .filter(model_version=model_version)
        .values_list("pk", flat=True)
    )
    latest = calibration_activation_latest(model_version=model_version, scanner=scanner)
    current = latest.calibration_id if latest is not None else None
    if current == (calibration.pk if calibration else None):
        raise ValidationError("This calibration is already the active one.")
    return CalibrationActivation.objects.create(
        model_version=model_version,
        scanner_manufacturer=scanner.manufacturer,
        scanner_model=scanner.model,
        calibration=calibration,
        activated_by=activated_by,
        reason=reason[:255],
    )


def calibration_rollback_target(
    *, model_version: str, scanner: Scanner = SITE
) -> SiteCalibration | None:
    """What a rollback returns to: the calibration active before the current one (for
    `scanner`'s scope).

    Raises ValidationError when nothing was active before (nothing to roll back)."""
    activations = list(
        calibration_activations(model_version=model_version, scanner=scanner)[:2]
    )
    if not activations:
        raise ValidationError(
            "No calibration has been activated: nothing to roll back."
        )
    if len(activations) == 1:
        return None
    return activations[1].calibration
