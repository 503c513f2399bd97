"""Reads of the registry: which model version makes new analyses (and which runs beside
it in shadow), and which site calibration is in use for a model version, site-wide and per
scanner model."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.db.models import QuerySet

from portal.clinical.scanners import SITE, Scanner
from portal.registry.installed import InstallError, describe, shipped_version
from portal.registry.models import (
    CalibrationActivation,
    ModelActivation,
    ModelVersion,
    PromotionRequest,
    SiteCalibration,
)


def calibration_activation_latest(
    *, model_version: str, scanner: Scanner = SITE
) -> CalibrationActivation | None:
    return calibration_activations(model_version=model_version, scanner=scanner).first()


def site_calibration_active(
    *, model_version: str, scanner: Scanner = SITE
) -> SiteCalibration | None:
    """The calibration activated for `scanner` (the site-wide one by default) now; None:
    none of its own (site-wide: the model's own; a scanner: the site's)."""
    latest = calibration_activation_latest(model_version=model_version, scanner=scanner)
    return latest.calibration if latest is not None else None


def site_calibration_in_use(
    *, model_version: str, scanner: Scanner = SITE
) -> SiteCalibration | None:
    """What an analysis of a scan from `scanner` is shown with: its scanner model's
    active calibration, else the site-wide one (None: the model's own)."""
    if not scanner.is_site:
        own = site_calibration_active(model_version=model_version, scanner=scanner)
        if own is not None:
            return own
    return site_calibration_active(model_version=model_version)


def scanners_with_own_calibration(*, model_version: str) -> list[Scanner]:
    """Scanner models whose latest activation names a calibration of their own."""
    latest: dict[Scanner, int | None] = {}
    rows = (
        CalibrationActivation.objects.filter(model_version=model_version)
        .exclude(scanner_manufacturer="", scanner_model="")
        .order_by("-activated_at", "-id")
        .values_list("scanner_manufacturer", "scanner_model", "calibration_id")
    )
    for manufacturer, model, calibration_id in rows:
        latest.setdefault(Scanner(manufacturer, model), calibration_id)
    return sorted(
        (scanner for scanner, pk in latest.items() if pk is not None),
        key=lambda s: (s.manufacturer, s.model),
    )


def calibration_activations(
    *, model_version: str, scanner: Scanner = SITE
) -> QuerySet[CalibrationActivation]:
    return (
        CalibrationActivation.objects.filter(
            model_version=model_version,
            scanner_manufacturer=scanner.manufacturer,
            scanner_model=scanner.model,
        )
        .select_related("calibration", "activated_by")
        .order_by("-activated_at", "-id")
    )


def site_calibrations(
    *, model_version: str, scanner: Scanner | None = None
) -> QuerySet[SiteCalibration]:
    """Calibrations of a model version, newest first: all, or those of one scope."""
    rows = SiteCalibration.objects.filter(model_version=model_version)
    if scanner is not None:
        rows = rows.filter(
            scanner_manufacturer=scanner.manufacturer, scanner_model=scanner.model
        )
    return rows.select_related("created_by").order_by("-version")


def calibration_activations_latest(
    *, model_version: str
) -> list[CalibrationActivation]:
    """The latest activation of each scope (the site first, then scanner models by
    name): what is active for each, since when, set by whom."""
    latest: dict[Scanner, CalibrationActivation] = {}
    rows = (
        CalibrationActivation.objects.filter(model_version=model_version)
        .select_related("calibration", "activated_by")
        .order_by("-activated_at", "-id")
    )
    for activation in rows:
        latest.setdefault(activation.scanner, activation)
    return sorted(
        latest.values(),
        key=lambda a: (not a.scanner.is_site, a.scanner_manufacturer, a.scanner_model),
    )


def model_activations(*, role: str | None = None) -> QuerySet[ModelActivation]:
    rows = ModelActivation.objects.select_related(
        "model_version", "activated_by", "confirmed_by"
    ).order_by("-activated_at", "-id")
    return rows.filter(role=role) if role else rows


def model_activation_latest(*, role: str) -> ModelActivation | None:
    return model_activations(role=role).first()


def model_version_promoted() -> str | None:
    """The version the activation log makes active (None: nothing was ever promoted)."""
    latest = model_activation_latest(role=ModelActivation.Role.ACTIVE)
    if latest is not None and latest.model_version is not None:
        return latest.model_version.version
    return None


def model_version_active() -> str | None:
    """The version new analyses are made by: the latest promoted (or rolled back to),
    else the shipped model's; None when neither is known."""
    return model_version_promoted() or shipped_version()


def model_version_shadow() -> str | None:
    """The version run beside the active one on new scans, for comparison only."""
    latest = model_activation_latest(role=ModelActivation.Role.SHADOW)
    if latest is None or latest.model_version is None:
        return None
    return latest.model_version.version


def model_versions() -> QuerySet[ModelVersion]:
    return ModelVersion.objects.select_related("installed_by").order_by(
        "-installed_at", "-id"
    )


def model_versions_shown() -> list[ModelVersion]:
    """The recorded versions, and the shipped model as its record would be (unsaved,
    no pk) while it is not recorded yet: reading the registry writes nothing."""
    versions = list(model_versions())
    shipped = shipped_version()
    if shipped is None or any(v.version == shipped for v in versions):
        return versions
    try:
        described = describe(Path(settings.ML_WEIGHTS_DIR))
    except InstallError:
        return versions
    return [
        *versions,
        ModelVersion(
            version=shipped,
            source=ModelVersion.Source.SHIPPED,
            **described.record_fields(),
        ),
    ]


def promotion_requests_pending() -> QuerySet[PromotionRequest]:
    return (
        PromotionRequest.objects.filter(status=PromotionRequest.Status.PENDING)
        .select_related("model_version", "requested_by")
        .order_by("-requested_at", "-id")
    )
