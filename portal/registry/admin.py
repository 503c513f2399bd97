"""Site calibrations in the admin: read only. Fitting, activating and rolling back go
through the calibration page (portal.review), which re-scores and audits."""

from __future__ import annotations

from typing import Any

from django.contrib import admin

from portal.registry.models import CalibrationActivation, SiteCalibration


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(SiteCalibration)
class SiteCalibrationAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "model_version",
        "version",
        "scanner_manufacturer",
        "scanner_model",
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
        "model_version",
        "scanner_manufacturer",
        "scanner_model",
        "calibration",
        "activated_by",
        "activated_at",
        "reason",
        "rescored",
    )
    list_filter = ("model_version", "scanner_model")
