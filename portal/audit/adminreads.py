"""Admin pages of clinical records leave access records like the portal's own pages:
a list page one record per row shown (one insert), a change page one for its object."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse

from portal.audit.services import Action, record_accesses


class RecordedReadsAdminMixin:
    def changelist_view(
        self, request: HttpRequest, extra_context: dict | None = None
    ) -> HttpResponse:
        response = super().changelist_view(request, extra_context)  # type: ignore[misc]
        changelist = (getattr(response, "context_data", None) or {}).get("cl")
        if changelist is not None and request.method == "GET":
            record_accesses(
                request, changelist.result_list, action=Action.VIEW, detail="admin list"
            )
        return response

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict,
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Any = None,
    ) -> HttpResponse:
        if obj is not None and not add:
            record_accesses(request, [obj], action=Action.VIEW, detail="admin page")
        return super().render_change_form(  # type: ignore[misc]
            request, context, add, change, form_url, obj
        )
