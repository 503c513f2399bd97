"""Analyses: results, retry, and downloads of their result images."""

from __future__ import annotations

from django.http import Http404, HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.response import Response

from portal.analyses import services as analysis_services
from portal.analyses.composites import CompositeUnavailable, analysis_artifact_name
from portal.analyses.modelinfo import ModelVersionUnavailable
from portal.analyses.models import ARTIFACT_KINDS, Analysis
from portal.api.permissions import needs
from portal.api.serializers import (
    AnalysisSerializer,
)
from portal.api.views.base import (
    Conflict,
    DownloadView,
    PortalAPIView,
    ServiceUnavailable,
    get_or_not_found,
)
from portal.audit.services import Action, record_access
from portal.dicomnet.views import READ as DICOM_READ
from portal.dicomnet.views import dicom_response
from portal.dicomnet.views import results_file as dicom_results_file
from portal.storage_views import stream_from_storage


def _get_analysis(pk: int) -> Analysis:
    return get_or_not_found(Analysis.objects.select_related("scan"), pk)


class AnalysisDetailView(PortalAPIView):
    required_permissions = needs(GET=("analyses.view_analysis",))

    @extend_schema(
        responses={200: AnalysisSerializer}, summary="An analysis and its results"
    )
    def get(self, request: Request, pk: int) -> Response:
        analysis = _get_analysis(pk)
        record_access(request, analysis, action=Action.VIEW, detail="api analysis")
        return Response(AnalysisSerializer(analysis, context={"request": request}).data)


class AnalysisRetryView(PortalAPIView):
    required_permissions = needs(
        POST=("analyses.view_analysis", "analyses.change_analysis")
    )

    @extend_schema(
        request=None,
        responses={
            200: AnalysisSerializer,
            409: OpenApiResponse(description="the analysis has not failed"),
            503: OpenApiResponse(description="no model installed"),
        },
        summary="Run a failed analysis again",
    )
    def post(self, request: Request, pk: int) -> Response:
        analysis = _get_analysis(pk)
        if not analysis.can_retry:
            raise Conflict(
                f"Analysis {analysis.pk} is {analysis.status}; only failed analyses "
                "can be retried."
            )
        try:
            retried = analysis_services.analysis_retry(analysis=analysis)
        except ModelVersionUnavailable as exc:
            raise ServiceUnavailable(f"Cannot retry: {exc}") from None
        record_access(request, analysis, action=Action.RETRY, detail="api retry")
        return Response(AnalysisSerializer(retried, context={"request": request}).data)


class AnalysisArtifactView(DownloadView):
    required_permissions = needs(GET=("clinical.view_scan", "analyses.view_analysis"))

    @extend_schema(
        responses={(200, "image/png"): OpenApiTypes.BINARY},
        summary=(
            "Download a result image: mask, overlay, gradcam, seg_gradcam "
            "(pictures drawn on the scan), gradcam_map or seg_gradcam_map (grey heatmaps)"
        ),
    )
    def get(self, request: Request, pk: int, kind: str) -> HttpResponse:
        if kind not in ARTIFACT_KINDS:
            raise exceptions.NotFound(
                f"No result image called {kind!r}; use one of {', '.join(ARTIFACT_KINDS)}."
            )
        analysis = _get_analysis(pk)
        try:
            name = analysis_artifact_name(analysis=analysis, kind=kind)
        except CompositeUnavailable as exc:
            reason = str(exc)
            raise exceptions.NotFound(f"{reason[:1].upper()}{reason[1:]}.") from None
        record_access(request, analysis, action=Action.DOWNLOAD, detail=kind)
        return stream_from_storage(name, download_name=f"analysis-{analysis.pk}-{kind}")


class AnalysisDicomView(DownloadView):
    required_permissions = needs(GET=DICOM_READ)

    @extend_schema(
        responses={
            (200, "application/dicom"): OpenApiTypes.BINARY,
            (200, "application/zip"): OpenApiTypes.BINARY,
        },
        summary="Download the results as DICOM: seg, sr, overlay, source (for a scan "
        "uploaded as PNG/JPEG) or zip (all of them)",
    )
    def get(self, request: Request, pk: int, kind: str) -> HttpResponse:
        analysis = _get_analysis(pk)
        try:
            content, filename, content_type = dicom_results_file(analysis, kind)
        except Http404 as exc:
            raise exceptions.NotFound(str(exc)) from None
        record_access(request, analysis, action=Action.DOWNLOAD, detail=f"dicom {kind}")
        return dicom_response(content, filename=filename, content_type=content_type)
