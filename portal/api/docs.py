"""The API's root, browsable documentation (Swagger UI over /api/v1/schema/), JSON 404s."""

from __future__ import annotations

from csp.decorators import csp_replace
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse
from django.utils.decorators import method_decorator
from django.views.defaults import page_not_found
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

# Swagger UI's files are the portal's own static files (drf-spectacular-sidecar); its
# page injects inline styles and data: images, so this page alone allows those.
DOCS_POLICY = {
    "style-src": ["'self'", "'unsafe-inline'"],
    "img-src": ["'self'", "data:"],
}


class SchemaView(SpectacularAPIView):
    """The OpenAPI schema of /api/v1/ (login required: SERVE_PERMISSIONS)."""


class SwaggerView(SpectacularSwaggerSplitView):
    url_name = "api:schema"
    title = "BUS-AI portal API v1"

    @extend_schema(exclude=True)
    @method_decorator(csp_replace(DOCS_POLICY))
    def get(self, request: Request, *args: object, **kwargs: object) -> Response:
        return super().get(request, *args, **kwargs)


class ApiRootView(APIView):
    """Where to start: the collections, the documentation and the schema."""

    @extend_schema(exclude=True)
    def get(self, request: Request) -> Response:
        def url(name: str) -> str:
            return request.build_absolute_uri(reverse(name))

        return Response(
            {
                "token": url("api:token"),
                "patients": url("api:patient-list"),
                "studies": url("api:study-list"),
                "calibrations": url("api:calibration-list"),
                "docs": url("api:docs"),
                "schema": url("api:schema"),
            }
        )


def handler404(request: HttpRequest, exception: Exception) -> HttpResponse:
    """JSON under /api/ (clients read the message), the usual page elsewhere."""
    if not request.path.startswith("/api/"):
        return page_not_found(request, exception)
    return JsonResponse(
        {
            "error": f"No API endpoint at {request.path}; the endpoints are listed at "
            "/api/v1/docs/ (schema: /api/v1/schema/).",
            "code": "not_found",
        },
        status=404,
    )
