"""The audit trail in the admin: searchable and filterable, never editable by anyone."""

from __future__ import annotations

from typing import Any

from auditlog.admin import LogEntryAdmin
from auditlog.models import LogEntry
from django.contrib import admin
from django.http import HttpRequest

from portal.audit.models import AccessRecord


class ReadOnlyAdminMixin:
    """No add, change or delete, superusers included; viewing needs the view permission."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        return {}


@admin.register(AccessRecord)
class AccessRecordAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "at",
        "username",
        "action",
        "content_type",
        "object_id",
        "detail",
        "client_address",
    )
    list_filter = (
        "action",
        ("content_type", admin.RelatedOnlyFieldListFilter),
        "detail",
        "at",
    )
    search_fields = ("username", "object_id", "client_address", "path")
    date_hierarchy = "at"
    list_select_related = ("content_type",)
    readonly_fields = (
        "at",
        "user",
        "username",
        "client_address",
        "action",
        "content_type",
        "object_id",
        "detail",
        "path",
    )


# django-auditlog's own admin still lets a cascade delete remove entries; ours does not.
admin.site.unregister(LogEntry)


@admin.register(LogEntry)
class AuditLogEntryAdmin(ReadOnlyAdminMixin, LogEntryAdmin):
    pass
