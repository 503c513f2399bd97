from __future__ import annotations

from django.contrib import admin

from portal.clinical.models import Patient, Scan, Study


class StudyInline(admin.TabularInline):
    model = Study
    fields = ("study_date", "accession_number", "description", "created_by")
    readonly_fields = ("created_by",)
    extra = 0
    show_change_link = True


@admin.register(Patient)
class PatientAdmin(admin.ModelAdmin):
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
class StudyAdmin(admin.ModelAdmin):
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


@admin.register(Scan)
class ScanAdmin(admin.ModelAdmin):
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
    readonly_fields = (
        "uuid",
        "study",
        "original",
        "original_filename",
        "sha256",
        "width",
        "height",
        "format",
        "uploaded_by",
        "uploaded_at",
    )

    def has_add_permission(self, request: object) -> bool:
        return False  # scans come in through the upload page, which decodes them
