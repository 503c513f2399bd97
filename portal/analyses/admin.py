from __future__ import annotations

from django.contrib import admin

from portal.analyses.models import Analysis


@admin.register(Analysis)
class AnalysisAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "scan",
        "status",
        "label",
        "confidence",
        "model_version",
        "attempts",
        "queued_at",
        "finished_at",
    )
    list_filter = ("status", "label", "model_version", "queued_at")
    search_fields = (
        "=id",
        "scan__original_filename",
        "scan__study__patient__identifier",
        "worker",
    )
    list_select_related = ("scan",)
    # Results are written by workers only; the admin shows them.
    readonly_fields = tuple(
        f.name for f in Analysis._meta.get_fields() if f.concrete and not f.auto_created
    )

    def has_add_permission(self, request: object) -> bool:
        return False
