"""Reads of the registry: which site calibration is in use for a model version."""

from __future__ import annotations

from django.db.models import QuerySet

from portal.registry.models import CalibrationActivation, SiteCalibration


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
