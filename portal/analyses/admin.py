from __future__ import annotations

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from portal.analyses.composites import available_kinds
from portal.analyses.models import ARTIFACT_KINDS, Analysis
from portal.audit.adminreads import RecordedReadsAdminMixin

ARTIFACT_TITLES = {
    "mask": "lesion mask (1-bit)",
    "overlay": "lesion outline on the scan",
    "gradcam": "Grad-CAM on the scan",
    "seg_gradcam": "Seg-Grad-CAM on the scan",
    "gradcam_map": "Grad-CAM map (grey)",
    "seg_gradcam_map": "Seg-Grad-CAM map (grey)",
}


@admin.register(Analysis)
class AnalysisAdmin(RecordedReadsAdminMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "scan",
        "status",
        "label",
        "confidence",
        "model_version",
        "in_distribution",
        "attempts",
        "queued_at",
        "finished_at",
    )
    list_filter = ("status", "label", "in_distribution", "model_version", "queued_at")
    search_fields = (
        "=id",
        "scan__original_filename",
        "scan__study__patient__identifier",
        "worker",
    )
    list_select_related = ("scan",)
    # Results are written by workers only; the admin shows them. Files are linked through
    # the authorised download view (pictures drawn on first request), not by storage URL;
    # as form fields their widget would ask storage for one, which the S3 storage refuses.
    exclude = ARTIFACT_KINDS
    readonly_fields = (
        *(
            f.name
            for f in Analysis._meta.get_fields()
            if f.concrete and not f.auto_created and f.name not in ARTIFACT_KINDS
        ),
        "result_files",
    )

    @admin.display(description="result files")
    def result_files(self, analysis: Analysis) -> str:
        kinds = available_kinds(analysis)
        if not kinds:
            return "—"
        return format_html(
            "<ul>{}</ul>",
            format_html_join(
                "",
                '<li><a href="{}">{}</a></li>',
                (
                    (
                        reverse("analyses:artifact", args=[analysis.pk, kind]),
                        ARTIFACT_TITLES[kind],
                    )
                    for kind in kinds
                ),
            ),
        )

    def has_add_permission(self, request: object) -> bool:
        return False
