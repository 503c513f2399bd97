"""REST API v1: the portal's patients, studies, uploads and analyses for other systems.

Every view is a thin layer over the portal's own services and selectors, with the same
permissions as the pages (portal.accounts.roles) and the same audit records for views
of studies, downloads and retries.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from auditlog.context import auditlog_value
from django.contrib.auth import authenticate
from django.core.exceptions import RequestDataTooBig, TooManyFilesSent
from django.db.models import Count, Q, QuerySet
from django.http import FileResponse, HttpResponse
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, generics, status
from rest_framework.authtoken.models import Token
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import AnonRateThrottle, UserRateThrottle
from rest_framework.views import APIView

from portal.analyses import services as analysis_services
from portal.analyses.composites import CompositeUnavailable, analysis_artifact_name
from portal.analyses.modelinfo import ModelVersionUnavailable, current_model_version
from portal.analyses.models import ARTIFACT_KINDS, Analysis
from portal.api.permissions import PortalPermissions, needs
from portal.api.serializers import (
    AnalysisSerializer,
    BatchSerializer,
    PatientSerializer,
    StudyCreateSerializer,
    StudyDetailSerializer,
    StudySerializer,
    TokenRequestSerializer,
    TokenSerializer,
    UploadReportSerializer,
    UploadRequestSerializer,
    item_row,
)
from portal.api.throttles import UploadRateThrottle
from portal.audit.models import AccessRecord
from portal.audit.services import record_access
from portal.clinical.models import Patient, Scan, Study
from portal.clinical.services import patient_create, study_create
from portal.ingest.models import UploadBatch, UploadItem
from portal.ingest.selectors import batch_items, batch_progress
from portal.ingest.services import upload_to_study
from portal.review.forms import DashboardFilterForm
from portal.review.selectors import DashboardFilters, dashboard_rows, model_versions
from portal.storage_views import stream_from_storage

logger = logging.getLogger(__name__)

Action = AccessRecord.Action
Outcome = UploadItem.Outcome


class ServiceUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "The service is not available right now; try again later."
    default_code = "unavailable"


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"


def _not_found(model: type, pk: Any) -> exceptions.NotFound:
    return exceptions.NotFound(
        f"No {model._meta.verbose_name} with id {pk}, or it was deleted."
    )


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


class FileContentNegotiation(BaseContentNegotiation):
    """Downloads answer with the file whatever the client's Accept header says."""

    def select_parser(self, request: Request, parsers: list) -> Any:
        return parsers[0] if parsers else None

    def select_renderer(
        self, request: Request, renderers: list, format_suffix: str | None = None
    ) -> tuple[Any, str]:
        return renderers[0], renderers[0].media_type


# --- authentication -------------------------------------------------------------------


class TokenView(APIView):
    """Exchange a portal username and password for an API token."""

    authentication_classes = ()
    permission_classes = (AllowAny,)
    throttle_classes = (AnonRateThrottle,)

    def get_authenticate_header(self, request: Request) -> str:
        return "Token"  # wrong credentials are a 401 that names the scheme

    @extend_schema(
        request=TokenRequestSerializer,
        responses={
            200: TokenSerializer,
            401: OpenApiResponse(description="wrong credentials"),
        },
        summary="Get an API token",
        description="Send it as `Authorization: Token <key>`. The same key is returned "
        "until it is revoked with DELETE.",
    )
    def post(self, request: Request) -> Response:
        serializer = TokenRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = authenticate(
            request._request,
            username=serializer.validated_data["username"],
            password=serializer.validated_data["password"],
        )
        if user is None or not user.is_active:
            # The same answer for a wrong name, a wrong password and a locked account.
            raise exceptions.AuthenticationFailed(
                "Wrong username or password (repeated failures lock the account for a while)"
            )
        token, _ = Token.objects.get_or_create(user=user)
        return Response({"token": token.key})


class TokenRevokeView(PortalAPIView):
    required_permissions = needs(DELETE=())

    @extend_schema(responses={204: None}, summary="Revoke the token used for this call")
    def delete(self, request: Request) -> Response:
        Token.objects.filter(user=request.user).delete()
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- patients -------------------------------------------------------------------------


class PatientListView(PortalAPIView, generics.ListCreateAPIView):
    serializer_class = PatientSerializer
    required_permissions = needs(
        GET=("clinical.view_patient",),
        POST=("clinical.view_patient", "clinical.add_patient"),
    )

    def get_queryset(self) -> QuerySet[Patient]:
        patients = Patient.objects.order_by("identifier")
        search = self.request.query_params.get("search", "").strip()
        if search:
            patients = patients.filter(
                Q(identifier__icontains=search) | Q(name__icontains=search)
            )
        return patients

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "search", str, description="Part of the hospital identifier or name"
            )
        ],
        summary="List patients",
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(summary="Register a patient")
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().post(request, *args, **kwargs)

    def perform_create(self, serializer: PatientSerializer) -> None:
        data = serializer.validated_data
        serializer.instance = patient_create(
            identifier=data["identifier"],
            name=data["name"],
            birth_date=data.get("birth_date"),
        )


class PatientDetailView(PortalAPIView, generics.RetrieveAPIView):
    serializer_class = PatientSerializer
    queryset = Patient.objects.all()
    required_permissions = needs(GET=("clinical.view_patient",))

    def get_object(self) -> Patient:
        patient = Patient.objects.filter(pk=self.kwargs["pk"]).first()
        if patient is None:
            raise _not_found(Patient, self.kwargs["pk"])
        return patient


# --- studies --------------------------------------------------------------------------

STUDY_FILTERS = [
    OpenApiParameter(
        "q",
        str,
        description="Hospital identifier, accession number or patient name (also `search`)",
    ),
    OpenApiParameter("patient", str, description="Hospital identifier, exact"),
    OpenApiParameter("date_from", OpenApiTypes.DATE, description="Study date from"),
    OpenApiParameter("date_to", OpenApiTypes.DATE, description="Study date to"),
    OpenApiParameter(
        "label",
        str,
        enum=list(Analysis.Label.values),
        description="Predicted label of a scan",
    ),
    OpenApiParameter(
        "confidence_min", float, description="Confidence from, in percent (0-100)"
    ),
    OpenApiParameter(
        "confidence_max", float, description="Confidence to, in percent (0-100)"
    ),
    OpenApiParameter("review", str, enum=["reviewed", "unreviewed"]),
    OpenApiParameter(
        "status",
        str,
        enum=list(Analysis.Status.values),
        description="Analysis status of a scan",
    ),
    OpenApiParameter("model_version", str),
]


def _study_filters(params: Any) -> DashboardFilters:
    """The dashboard's filters, read and checked by the dashboard's own form."""
    data = params.copy()
    if "search" in data and "q" not in data:
        data["q"] = data["search"]
    form = DashboardFilterForm(data, model_versions=model_versions())
    if not form.is_valid():
        raise exceptions.ValidationError(form.errors.get_json_data(escape_html=False))
    return form.filters()


def filter_studies(
    studies: QuerySet[Study], filters: DashboardFilters
) -> QuerySet[Study]:
    if filters.patient:
        studies = studies.filter(patient__identifier__iexact=filters.patient)
    if filters.date_from:
        studies = studies.filter(study_date__gte=filters.date_from)
    if filters.date_to:
        studies = studies.filter(study_date__lte=filters.date_to)
    if filters.search:
        term = filters.search
        studies = studies.filter(
            Q(patient__identifier__icontains=term)
            | Q(accession_number__icontains=term)
            | Q(patient__name__icontains=term)
        )
    # Filters on results keep a study when one of its analyses matches them.
    by_result = replace(filters, patient="", date_from=None, date_to=None, search="")
    if by_result != DashboardFilters():
        studies = studies.filter(
            pk__in=dashboard_rows(by_result).order_by().values("scan__study_id")
        )
    return studies


class StudyListView(PortalAPIView, generics.ListCreateAPIView):
    serializer_class = StudySerializer
    required_permissions = needs(
        GET=("clinical.view_study",),
        POST=("clinical.view_patient", "clinical.add_study"),
    )

    def get_queryset(self) -> QuerySet[Study]:
        studies = Study.objects.select_related("patient").annotate(
            scan_count=Count("scans")
        )
        return filter_studies(
            studies, _study_filters(self.request.query_params)
        ).order_by("-study_date", "-id")

    @extend_schema(parameters=STUDY_FILTERS, summary="List studies, newest first")
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(
        request=StudyCreateSerializer,
        responses={201: StudySerializer},
        summary="Register a study of a patient",
    )
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = StudyCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        study = study_create(
            patient=data["patient"],
            created_by=request.user,
            study_date=data["study_date"],
            accession_number=data["accession_number"],
            description=data["description"],
        )
        study.scan_count = 0
        return Response(
            StudySerializer(study, context=self.get_serializer_context()).data,
            status=status.HTTP_201_CREATED,
        )


def _get_study(pk: int) -> Study:
    study = Study.objects.select_related("patient").filter(pk=pk).first()
    if study is None:
        raise _not_found(Study, pk)
    return study


class StudyDetailView(PortalAPIView):
    required_permissions = needs(
        GET=("clinical.view_study", "clinical.view_scan", "analyses.view_analysis")
    )

    @extend_schema(
        responses={200: StudyDetailSerializer},
        summary="A study with its scans and each scan's latest analysis",
    )
    def get(self, request: Request, pk: int) -> Response:
        study = (
            Study.objects.select_related("patient")
            .prefetch_related("scans__analyses")
            .annotate(scan_count=Count("scans"))
            .filter(pk=pk)
            .first()
        )
        if study is None:
            raise _not_found(Study, pk)
        record_access(request, study, action=Action.VIEW, detail="api study")
        return Response(StudyDetailSerializer(study, context={"request": request}).data)


class StudyScansView(PortalAPIView):
    parser_classes = (MultiPartParser,)
    throttle_classes = (UserRateThrottle, UploadRateThrottle)
    required_permissions = needs(POST=("clinical.view_study", "clinical.add_scan"))

    @extend_schema(
        request={"multipart/form-data": UploadRequestSerializer},
        responses={
            201: OpenApiResponse(
                UploadReportSerializer, description="some files accepted"
            ),
            200: OpenApiResponse(UploadReportSerializer, description="only duplicates"),
            422: OpenApiResponse(
                UploadReportSerializer, description="every file rejected"
            ),
            503: OpenApiResponse(description="no model installed; uploads paused"),
        },
        summary="Upload images, DICOM files or zips to a study",
        description="Each file (each file inside a zip, named by its path in the zip) "
        "is accepted with its new scan and queued analysis, recognised as a duplicate "
        "of an existing scan (same SHA-256; not analysed again), or rejected with the "
        "reason. Follow the analyses with GET /api/v1/batches/{batch}/.",
    )
    def post(self, request: Request, pk: int) -> Response:
        study = _get_study(pk)
        try:
            files = request.FILES.getlist("files")
            others = [name for name in request.FILES if name != "files"]
        except TooManyFilesSent:
            raise exceptions.ValidationError(
                {"files": ["too many files in one request; put them in a zip"]}
            ) from None
        except RequestDataTooBig:
            raise exceptions.ValidationError(
                {"files": ["the form fields are too large; send the files only"]}
            ) from None
        if not files:
            hint = f" (the request has {', '.join(others)} instead)" if others else ""
            raise exceptions.ValidationError(
                {
                    "files": [
                        f"send one or more files in the multipart field 'files'{hint}"
                    ]
                }
            )
        try:
            model_version = current_model_version()
        except ModelVersionUnavailable as exc:
            logger.error("API upload refused: %s", exc)
            raise ServiceUnavailable(f"Uploads are paused: {exc}") from None
        result = upload_to_study(
            study=study,
            files=files,
            uploaded_by=request.user,
            model_version=model_version,
            source=UploadBatch.Source.API,
        )
        accepted = [item_row(i) for i in result.of(Outcome.ACCEPTED)]
        duplicates = [item_row(i) for i in result.of(Outcome.DUPLICATE)]
        rejected = [item_row(i) for i in result.of(Outcome.REJECTED)]
        body: dict[str, Any] = {
            "batch": result.batch.pk,
            "progress_url": request.build_absolute_uri(
                reverse("api:batch-detail", args=[result.batch.pk])
            ),
            "accepted": accepted,
            "duplicates": duplicates,
            "rejected": rejected,
        }
        if accepted:
            code = status.HTTP_201_CREATED
        elif duplicates:
            code = status.HTTP_200_OK
        else:
            code = status.HTTP_422_UNPROCESSABLE_ENTITY
            body["error"] = (
                "No file was accepted: each file in 'rejected' has the reason it was "
                "refused."
            )
            body["code"] = "all_rejected"
        return Response(body, status=code)


# --- uploads --------------------------------------------------------------------------


class BatchDetailView(PortalAPIView):
    required_permissions = needs(GET=("clinical.view_study", "clinical.view_scan"))

    @extend_schema(
        responses={200: BatchSerializer},
        summary="An upload's report and the progress of its analyses",
    )
    def get(self, request: Request, pk: int) -> Response:
        batch = UploadBatch.objects.filter(pk=pk).first()
        if batch is None:
            raise _not_found(UploadBatch, pk)
        progress = batch_progress(batch=batch)
        rows: dict[str, list[dict[str, Any]]] = {o: [] for o in Outcome.values}
        for item in batch_items(batch=batch):
            rows[item.outcome].append(item_row(item))
        body = {
            key: progress[key]
            for key in (
                "batch",
                "study",
                "images",
                "analysed",
                "failed",
                "running",
                "queued",
                "finished",
            )
        }
        body.update(
            accepted=rows[Outcome.ACCEPTED],
            duplicates=rows[Outcome.DUPLICATE],
            rejected=rows[Outcome.REJECTED],
        )
        return Response(body)


# --- analyses -------------------------------------------------------------------------


def _get_analysis(pk: int) -> Analysis:
    analysis = Analysis.objects.select_related("scan").filter(pk=pk).first()
    if analysis is None:
        raise _not_found(Analysis, pk)
    return analysis


class AnalysisDetailView(PortalAPIView):
    required_permissions = needs(GET=("analyses.view_analysis",))

    @extend_schema(
        responses={200: AnalysisSerializer}, summary="An analysis and its results"
    )
    def get(self, request: Request, pk: int) -> Response:
        analysis = _get_analysis(pk)
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


# --- downloads ------------------------------------------------------------------------


class DownloadView(PortalAPIView):
    content_negotiation_class = FileContentNegotiation


class ScanOriginalView(DownloadView):
    required_permissions = needs(GET=("clinical.view_scan",))

    @extend_schema(
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY},
        summary="Download a scan's original file",
    )
    def get(self, request: Request, pk: int) -> FileResponse:
        scan = Scan.objects.filter(pk=pk).first()
        if scan is None:
            raise _not_found(Scan, pk)
        record_access(request, scan, action=Action.DOWNLOAD, detail="original")
        return stream_from_storage(scan.original.name, download_name=f"scan-{scan.pk}")


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
