from __future__ import annotations

from django.contrib import admin
from django.db.models.fields.files import FieldFile
from django.urls import reverse
from django.utils.html import format_html

from portal.audit.adminreads import RecordedReadsAdminMixin
from portal.clinical.models import Patient, Scan, Study


class StudyInline(admin.TabularInline):
    model = Study
    fields = ("study_date", "accession_number", "description", "created_by")
    readonly_fields = ("created_by",)
    extra = 0
    show_change_link = True


@admin.register(Patient)
class PatientAdmin(RecordedReadsAdminMixin, admin.ModelAdmin):
    list_display = ("identifier", "name", "birth_date", "created_at")
    search_fields = ("identifier", "name")
    list_filter = ("created_at",)
    inlines = (StudyInline,)


class ScanInline(admin.TabularInline):
    model = Scan
    fields = (
        "original_filename",
        "format",
        "width",
        "height",
        "uploaded_by",
        "uploaded_at",
    )
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True


@admin.register(Study)
class StudyAdmin(RecordedReadsAdminMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "patient",
        "study_date",
        "accession_number",
        "created_by",
        "created_at",
    )
    search_fields = (
        "patient__identifier",
        "patient__name",
        "accession_number",
        "description",
    )
    list_filter = ("study_date", "created_at")
    list_select_related = ("patient", "created_by")
    raw_id_fields = ("patient",)
    readonly_fields = ("created_by", "created_at")
    inlines = (ScanInline,)


def _file_link(scan: Scan, stored: FieldFile, view: str, text: str) -> str:
    """A link to the portal view that serves one of the scan's files ("-" without the
    file): the admin never links the storage itself."""
    if not stored:
        return "-"
    return format_html('<a href="{}">{}</a>', reverse(view, args=[scan.pk]), text)


@admin.register(Scan)
class ScanAdmin(RecordedReadsAdminMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "study",
        "original_filename",
        "format",
        "width",
        "height",
        "uploaded_at",
    )
    search_fields = ("original_filename", "sha256", "study__patient__identifier")
    list_filter = ("format", "uploaded_at")
    list_select_related = ("study",)
    # The files as links to the portal's download views (permission check, access
    # record); the admin's own file links would ask storage for a direct URL. The
    # model input (the worker's copy of the scan's pixels) is not shown at all.
    exclude = ("original", "display", "model_input")
    readonly_fields = (
        "uuid",
        "study",
        "original_file",
        "display_file",
        "original_filename",
        "sha256",
        "width",
        "height",
        "format",
        "uploaded_by",
        "uploaded_at",
        # Grouped on the review page only (portal.review.services.scan_lesion_set
        # keeps a scan in a lesion of its own study and checks who may group).
        "lesion",
    )

    @admin.display(description="original")
    def original_file(self, scan: Scan) -> str:
        return _file_link(scan, scan.original, "clinical:scan_original", "download")

    @admin.display(description="display copy")
    def display_file(self, scan: Scan) -> str:
        return _file_link(scan, scan.display, "review:scan_display", "display.png")

    def has_add_permission(self, request: object) -> bool:
        return False  # scans come in through the upload page, which decodes them
