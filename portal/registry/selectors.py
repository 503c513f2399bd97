"""Reads of the registry: which model version makes new analyses (and which runs beside
it in shadow), and which site calibration is in use for a model version."""

from __future__ import annotations

from django.db.models import QuerySet

from portal.registry.installed import shipped_version
from portal.registry.models import (
    CalibrationActivation,
    ModelActivation,
    ModelVersion,
    PromotionRequest,
    SiteCalibration,
)


def calibration_activation_latest(
    *, model_version: str
) -> CalibrationActivation | None:
    return calibration_activations(model_version=model_version).first()


def site_calibration_active(*, model_version: str) -> SiteCalibration | None:
    """The calibration analyses of `model_version` are shown with now (None: the
    model's own)."""
    latest = calibration_activation_latest(model_version=model_version)
    return latest.calibration if latest is not None else None


def calibration_activations(*, model_version: str) -> QuerySet[CalibrationActivation]:
    return (
        CalibrationActivation.objects.filter(model_version=model_version)
        .select_related("calibration", "activated_by")
        .order_by("-activated_at", "-id")
    )


def site_calibrations(*, model_version: str) -> QuerySet[SiteCalibration]:
    return (
        SiteCalibration.objects.filter(model_version=model_version)
        .select_related("created_by")
        .order_by("-version")
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


def promotion_requests_pending() -> QuerySet[PromotionRequest]:
    return (
        PromotionRequest.objects.filter(status=PromotionRequest.Status.PENDING)
        .select_related("model_version", "requested_by")
        .order_by("-requested_at", "-id")
    )
