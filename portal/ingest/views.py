from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from portal.accounts.roles import require_permissions
from portal.audit.models import AccessRecord
from portal.audit.services import record_access
from portal.ingest.models import UploadBatch
from portal.ingest.selectors import batch_items, batch_progress

READ = ("clinical.view_study", "clinical.view_scan")


@require_GET
@require_permissions(*READ)
def batch_detail(request: HttpRequest, pk: int) -> HttpResponse:
    batch = get_object_or_404(
        UploadBatch.objects.select_related("study__patient", "created_by"), pk=pk
    )
    record_access(
        request, batch, action=AccessRecord.Action.VIEW, detail="upload report"
    )
    return render(
        request,
        "ingest/batch_detail.html",
        {
            "batch": batch,
            "items": batch_items(batch=batch),
            "progress": batch_progress(batch=batch),
        },
    )


@never_cache
@require_GET
@require_permissions(*READ)
def batch_progress_json(request: HttpRequest, pk: int) -> JsonResponse:
    batch = get_object_or_404(UploadBatch, pk=pk)
    record_access(request, batch, action=AccessRecord.Action.VIEW, detail="status poll")
    return JsonResponse(batch_progress(batch=batch))
