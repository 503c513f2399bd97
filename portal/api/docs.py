"""Browsable documentation (Swagger UI over /api/v1/schema/) and JSON 404s."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularSwaggerSplitView
from rest_framework.request import Request
from rest_framework.response import Response

# Swagger UI's files come from its CDN; the portal's policy allows only its own
# origin, so this page alone widens it (no inline script: the init script is a URL).
SWAGGER_CDN = "https://cdn.jsdelivr.net"
DOCS_POLICY = (
    f"default-src 'self'; script-src 'self' {SWAGGER_CDN}; "
    f"style-src 'self' 'unsafe-inline' {SWAGGER_CDN}; img-src 'self' data: {SWAGGER_CDN}; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


class SwaggerView(SpectacularSwaggerSplitView):
    url_name = "api:schema"
    title = "BUS-AI portal API v1"

    @extend_schema(exclude=True)
    def get(self, request: Request, *args: object, **kwargs: object) -> Response:
        response = super().get(request, *args, **kwargs)
        response["Content-Security-Policy"] = DOCS_POLICY
        return response


def not_found(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        {
            "error": f"No API endpoint at {request.path}; the endpoints are listed at "
            "/api/v1/docs/ (schema: /api/v1/schema/).",
            "code": "not_found",
        },
        status=404,
    )
