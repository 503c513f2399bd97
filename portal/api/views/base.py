"""What every API view shares: the portal's permissions, the audit actor, JSON errors
for the cases DRF has no exception for, and file downloads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from auditlog.context import auditlog_value
from django.db.models import Model, QuerySet
from rest_framework import exceptions, status
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.request import Request
from rest_framework.views import APIView

from portal.api.permissions import PortalPermissions, needs
from portal.audit.services import Action, record_accesses


class ServiceUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "The service is not available right now; try again later."
    default_code = "unavailable"


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"


_Row = TypeVar("_Row", bound=Model)


def get_or_not_found(rows: QuerySet[_Row], pk: Any) -> _Row:
    """The row with this id, or a 404 that names what was not found."""
    row = rows.filter(pk=pk).first()
    if row is None:
        raise exceptions.NotFound(
            f"No {rows.model._meta.verbose_name} with id {pk}, or it was deleted."
        )
    return row


class PortalAPIView(APIView):
    permission_classes = (PortalPermissions,)
    required_permissions: Mapping[str, tuple[str, ...]] = needs()

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        # A token is checked here, after AuditlogMiddleware ran with no user: give
        # django-auditlog the caller, so changes made through the API say who made them.
        try:
            context = auditlog_value.get()
        except LookupError:
            return
        if context.get("actor") is None and request.user.is_authenticated:
            context["actor"] = request.user


class RecordedListMixin:
    """A GET of a list records every row of the page it answers (one insert)."""

    access_detail = "api list"
    request: Request

    def paginate_queryset(self, queryset: Any) -> Any:
        page = super().paginate_queryset(queryset)  # type: ignore[misc]
        if self.request.method == "GET":
            rows = page if page is not None else list(queryset)
            record_accesses(
                self.request, rows, action=Action.VIEW, detail=self.access_detail
            )
        return page


class FileContentNegotiation(BaseContentNegotiation):
    """Downloads answer with the file whatever the client's Accept header says."""

    def select_parser(self, request: Request, parsers: list) -> Any:
        return parsers[0] if parsers else None

    def select_renderer(
        self, request: Request, renderers: list, format_suffix: str | None = None
    ) -> tuple[Any, str]:
        return renderers[0], renderers[0].media_type


class DownloadView(PortalAPIView):
    content_negotiation_class = FileContentNegotiation
