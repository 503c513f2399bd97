"""Studies: the dashboard's filters, registration, a study with its scans, uploads."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import RequestDataTooBig, TooManyFilesSent
from django.db.models import Count, QuerySet
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
)
from rest_framework import exceptions, generics, status
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import UserRateThrottle

from portal.analyses.modelinfo import ModelVersionUnavailable
from portal.analyses.models import Analysis
from portal.api.permissions import needs
from portal.api.serializers import (
    StudyCreateSerializer,
    StudyDetailSerializer,
    StudySerializer,
    UploadReportSerializer,
    UploadRequestSerializer,
    item_row,
)
from portal.api.throttles import UploadRateThrottle
from portal.api.views.base import (
    PortalAPIView,
    RecordedListMixin,
    ServiceUnavailable,
    get_or_not_found,
)
from portal.audit.services import Action, record_access
from portal.clinical.models import Study
from portal.clinical.services import study_create
from portal.ingest.models import UploadBatch, UploadItem
from portal.ingest.services import upload_to_study
from portal.review.filters import InvalidFilters, read_filters
from portal.review.selectors import filtered_studies

Outcome = UploadItem.Outcome

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
        "confidence_min",
        float,
        description=(
            "Confidence from, in percent (0-100), compared as the pages show it (one "
            "decimal, half up): 80 keeps a confidence of 0.7995, shown as 80.0%"
        ),
        examples=[OpenApiExample("80 percent", value=80)],
    ),
    OpenApiParameter(
        "confidence_max",
        float,
        description=(
            "Confidence to, in percent (0-100), compared as the pages show it: 79.9 "
            "leaves out a confidence of 0.7995, shown as 80.0%"
        ),
        examples=[OpenApiExample("95.5 percent", value=95.5)],
    ),
    OpenApiParameter("review", str, enum=["reviewed", "unreviewed"]),
    OpenApiParameter(
        "status",
        str,
        enum=list(Analysis.Status.values),
        description="Analysis status of a scan",
    ),
    OpenApiParameter("model_version", str),
    OpenApiParameter(
        "distribution",
        str,
        enum=["outside", "inside"],
        description="A scan's result outside (or within) what the model was trained on",
    ),
]


class StudyListView(RecordedListMixin, PortalAPIView, generics.ListCreateAPIView):
    serializer_class = StudySerializer
    # Newest first, walked on the study_date index (see portal.api.pagination).
    keyset_ordering = ("-study_date", "-id")
    access_detail = "api study list"
    required_permissions = needs(
        GET=("clinical.view_study",),
        POST=("clinical.view_patient", "clinical.add_study"),
    )

    def get_queryset(self) -> QuerySet[Study]:
        query = self.request.query_params.copy()
        if "search" in query and "q" not in query:
            query["q"] = query["search"]
        try:
            return filtered_studies(read_filters(query))
        except InvalidFilters as exc:
            raise exceptions.ValidationError(exc.errors) from None

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
    return get_or_not_found(Study.objects.select_related("patient"), pk)


class StudyDetailView(PortalAPIView):
    required_permissions = needs(
        GET=("clinical.view_study", "clinical.view_scan", "analyses.view_analysis")
    )

    @extend_schema(
        responses={200: StudyDetailSerializer},
        summary="A study with its scans and each scan's latest analysis",
    )
    def get(self, request: Request, pk: int) -> Response:
        study = get_or_not_found(
            Study.objects.select_related("patient")
            .prefetch_related("scans__analyses")
            .annotate(scan_count=Count("scans")),
            pk,
        )
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
            result = upload_to_study(
                study=study,
                files=files,
                uploaded_by=request.user,
                source=UploadBatch.Source.API,
            )
        except ModelVersionUnavailable as exc:
            raise ServiceUnavailable(f"Uploads are paused: {exc}") from None
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
