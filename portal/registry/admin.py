"""Site calibrations and model versions in the admin: read only. Fitting, activating,
promoting and rolling back go through the calibration and model pages (portal.review),
which check roles and audit."""

from __future__ import annotations

from typing import Any

from django.contrib import admin

from portal.registry.models import (
    CalibrationActivation,
    ModelActivation,
    ModelVersion,
    PromotionRequest,
    SiteCalibration,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False


# A calibration's (and an activation's) scope: which model's output, which scanner's.
CALIBRATION_SCOPE = ("model_version", "scanner_manufacturer", "scanner_model")


@admin.register(SiteCalibration)
class SiteCalibrationAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "version",
        *CALIBRATION_SCOPE,
        "target_sensitivity",
        "reads",
        "created_by",
        "created_at",
    )
    list_filter = ("model_version", "scanner_model")


@admin.register(CalibrationActivation)
class CalibrationActivationAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        *CALIBRATION_SCOPE,
        "calibration",
        "activated_by",
        "activated_at",
        "reason",
        "rescored",
    )
    list_filter = SiteCalibrationAdmin.list_filter


@admin.register(ModelVersion)
class ModelVersionAdmin(ReadOnlyAdmin):
    list_display = ("version", "source", "installed_by", "installed_at")
    list_filter = ("source",)


@admin.register(ModelActivation)
class ModelActivationAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "role",
        "action",
        "model_version",
        "activated_by",
        "confirmed_by",
        "activated_at",
        "reason",
    )
    list_filter = ("role", "action")


@admin.register(PromotionRequest)
class PromotionRequestAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "model_version",
        "status",
        "requested_by",
        "requested_at",
        "decided_by",
        "decided_at",
    )
    list_filter = ("status",)
