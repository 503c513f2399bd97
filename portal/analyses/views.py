from __future__ import annotations

from django.contrib import messages
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_GET, require_POST

from portal.accounts.roles import require_permissions
from portal.analyses import services
from portal.analyses.composites import CompositeUnavailable, analysis_artifact_name
from portal.analyses.modelinfo import ModelVersionUnavailable
from portal.analyses.models import ARTIFACT_KINDS, Analysis
from portal.analyses.selectors import analysis_status_payload
from portal.audit.services import Action, record_access
from portal.storage_views import stream_from_storage


@require_POST
@require_permissions("analyses.view_analysis", "analyses.change_analysis")
def analysis_retry(request: HttpRequest, pk: int) -> HttpResponse:
    analysis = get_object_or_404(Analysis.objects.select_related("scan"), pk=pk)
    wants_json = "application/json" in request.headers.get("Accept", "")
    if not analysis.can_retry:
        error = f"Analysis is {analysis.status}; only failed analyses can be retried."
        if wants_json:
            return JsonResponse({"error": error}, status=409)
        messages.error(request, error)
        return redirect(analysis.scan.study)
    try:
        retried = services.analysis_retry(analysis=analysis)
        # A retry changes the row with a compare-and-set update, which no model
        # signal sees: keep who asked for it here.
        record_access(request, analysis, action=Action.RETRY, detail="retry")
    except ModelVersionUnavailable as exc:
        if wants_json:
            return JsonResponse({"error": str(exc)}, status=503)
        messages.error(request, f"Cannot retry: {exc}")
        return redirect(analysis.scan.study)
    if wants_json:
        return JsonResponse(analysis_status_payload(retried))
    messages.success(
        request, f"{analysis.scan.original_filename}: analysis queued again."
    )
    return redirect(analysis.scan.study)


@require_GET
@require_permissions("clinical.view_scan", "analyses.view_analysis")
def analysis_artifact(request: HttpRequest, pk: int, kind: str) -> FileResponse:
    if kind not in ARTIFACT_KINDS:
        raise Http404("unknown artifact")
    analysis = get_object_or_404(Analysis.objects.select_related("scan"), pk=pk)
    try:
        name = analysis_artifact_name(analysis=analysis, kind=kind)
    except CompositeUnavailable as exc:
        raise Http404(str(exc)) from None
    record_access(request, analysis, action=Action.DOWNLOAD, detail=kind)
    return stream_from_storage(name, download_name=f"analysis-{analysis.pk}-{kind}")
