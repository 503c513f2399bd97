from __future__ import annotations

from django.contrib import admin

from portal.audit.admin import ReadOnlyAdminMixin
from portal.audit.adminreads import RecordedReadsAdminMixin
from portal.review.models import Review


@admin.register(Review)
class ReviewAdmin(RecordedReadsAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    """Reviews are written on the review page only: signed ones never change."""

    list_display = (
        "id",
        "scan",
        "version",
        "label",
        "agrees_with_model",
        "birads",
        "author",
        "signed_at",
    )
    list_filter = ("label", "agrees_with_model", "birads", "signed_at")
    search_fields = ("=id", "=scan__id", "author__username")
    list_select_related = ("scan", "author")
    readonly_fields = tuple(
        f.name for f in Review._meta.get_fields() if f.concrete and not f.auto_created
    )
