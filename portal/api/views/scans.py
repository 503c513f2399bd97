"""Scans: download of the original file."""

from __future__ import annotations

from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request

from portal.api.permissions import needs
from portal.api.views.base import DownloadView, get_or_not_found
from portal.audit.services import Action, record_access
from portal.clinical.models import Scan
from portal.storage_views import stream_from_storage


class ScanOriginalView(DownloadView):
    required_permissions = needs(GET=("clinical.view_scan",))

    @extend_schema(
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY},
        summary="Download a scan's original file",
    )
    def get(self, request: Request, pk: int) -> FileResponse:
        scan = get_or_not_found(Scan.objects.all(), pk)
        record_access(request, scan, action=Action.DOWNLOAD, detail="original")
        return stream_from_storage(scan.original.name, download_name=f"scan-{scan.pk}")
