from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from portal.audit.adminreads import RecordedReadsAdminMixin
from portal.ingest.models import UploadBatch, UploadItem


class UploadItemInline(admin.TabularInline):
    model = UploadItem
    fields = (
        "filename",
        "archive",
        "outcome",
        "reason",
        "review_flag",
        "scan",
        "analysis",
    )
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(UploadBatch)
class UploadBatchAdmin(RecordedReadsAdminMixin, admin.ModelAdmin):
    """Upload reports are records of what happened: readable, never edited."""

    list_display = (
        "id",
        "created_at",
        "source",
        "study",
        "created_by",
        "accepted_count",
        "duplicate_count",
        "rejected_count",
    )
    list_filter = ("source", "created_at")
    list_select_related = ("study", "created_by")
    inlines = (UploadItemInline,)
    readonly_fields = (
        "study",
        "source",
        "created_by",
        "created_at",
        "finished_at",
        "accepted_count",
        "duplicate_count",
        "rejected_count",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
