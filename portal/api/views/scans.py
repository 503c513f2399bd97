"""Scans: download of the original file and of the signed outline."""

from __future__ import annotations

from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request

from portal.api.permissions import needs
from portal.api.views.base import DownloadView, get_or_not_found
from portal.audit.services import Action, record_access
from portal.clinical.models import Scan
from portal.review.selectors import current_signed_review
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


class ScanSignedOutlineView(DownloadView):
    required_permissions = needs(GET=("clinical.view_scan", "review.view_review"))

    @extend_schema(
        responses={(200, "image/png"): OpenApiTypes.BINARY},
        summary="Download the lesion mask the radiologist corrected and signed",
        description="1-bit PNG at the scan's size; 404 when the signed reading has no "
        "corrected outline (the model's outline stands: see the analysis's mask_url).",
    )
    def get(self, request: Request, pk: int) -> FileResponse:
        scan = get_or_not_found(Scan.objects.all(), pk)
        review = current_signed_review(scan=scan)
        name = review.outline.name if review is not None and review.outline else ""
        record_access(request, scan, action=Action.DOWNLOAD, detail="signed outline")
        return stream_from_storage(name, download_name=f"scan-{scan.pk}-signed-outline")
