"""Keyset pagination for the API's lists: a page starts after the last row of the one
before it, so page 1,000 costs what page 1 does, and nothing counts the whole table.

A list view names its order in `keyset_ordering` (fields all ascending or all
descending, the last one unique: the primary key, or a unique field); the queryset is
walked in that order from the cursor, which encodes the previous page's last values.
Responses carry `next` (a URL, or null on the last page) and `results`; there is no
`count` and no page number.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Model, Q, QuerySet
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import BasePagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.utils.urls import replace_query_param

from portal.keyset import InvalidCursor, cursor_decode, cursor_encode, keyset_beyond

CURSOR_PARAM = "cursor"
PAGE_SIZE_PARAM = "page_size"
MAX_PAGE_SIZE = 200


class Pagination(BasePagination):
    default_ordering: tuple[str, ...] = ("-pk",)

    def paginate_queryset(
        self, queryset: QuerySet[Any], request: Request, view: Any = None
    ) -> list[Any]:
        ordering = tuple(getattr(view, "keyset_ordering", self.default_ordering))
        descending = {name.startswith("-") for name in ordering}
        if len(descending) != 1:
            raise ValueError(f"keyset ordering must run one way: {ordering}")
        self.descending = descending.pop()
        self.fields = [name.lstrip("-") for name in ordering]
        self.request = request
        size = self._page_size(request)
        rows = queryset.order_by(*ordering)
        cursor = request.query_params.get(CURSOR_PARAM)
        if cursor:
            rows = rows.filter(self._after(queryset.model, cursor))
        page = list(rows[: size + 1])
        self.next_values = (
            [self._value(page[size - 1], name) for name in self.fields]
            if len(page) > size
            else None
        )
        return page[:size]

    def get_paginated_response(self, data: Any) -> Response:
        return Response({"next": self._next_link(), "results": data})

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "required": ["next", "results"],
            "properties": {
                "next": {
                    "type": "string",
                    "nullable": True,
                    "format": "uri",
                    "description": "The next page; null on the last one.",
                },
                "results": schema,
            },
        }

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        return [
            {
                "name": CURSOR_PARAM,
                "required": False,
                "in": "query",
                "description": "Where the page starts: taken from the `next` link.",
                "schema": {"type": "string"},
            },
            {
                "name": PAGE_SIZE_PARAM,
                "required": False,
                "in": "query",
                "description": f"Rows per page (at most {MAX_PAGE_SIZE}).",
                "schema": {"type": "integer"},
            },
        ]

    def _page_size(self, request: Request) -> int:
        default = api_settings.PAGE_SIZE or 50
        raw = request.query_params.get(PAGE_SIZE_PARAM)
        if raw is None:
            return default
        try:
            size = int(raw)
        except ValueError:
            raise ValidationError({PAGE_SIZE_PARAM: "a whole number"}) from None
        if size < 1:
            raise ValidationError({PAGE_SIZE_PARAM: "at least 1"})
        return min(size, MAX_PAGE_SIZE)

    @staticmethod
    def _value(row: Model, name: str) -> Any:
        return getattr(row, "pk" if name == "pk" else name)

    def _after(self, model: type[Model], cursor: str) -> Q:
        """Rows after the cursor, in the walk's order (portal.keyset)."""
        fields = [
            model._meta.pk if name == "pk" else model._meta.get_field(name)
            for name in self.fields
        ]
        try:
            values = cursor_decode(cursor, fields)
        except InvalidCursor:
            raise ValidationError(
                {CURSOR_PARAM: "not a cursor of this list: follow the `next` link"}
            ) from None
        return keyset_beyond(self.fields, values, descending=self.descending)

    def _next_link(self) -> str | None:
        if self.next_values is None:
            return None
        return replace_query_param(
            self.request.build_absolute_uri(),
            CURSOR_PARAM,
            cursor_encode(self.next_values),
        )
