"""Site calibrations, read-only, for administrators: the list, one with its
cross-validated report, and what is active per scanner model.

Calibrations are aggregates over the site's signed reads (parameters, measures, counts):
they name no patient, study or scan, so no access record is written for them. Fitting,
activating and rolling back stay on the administrators' page (/calibration/), audited
there.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import generics, serializers
from rest_framework.request import Request
from rest_framework.response import Response

from portal.analyses.modelinfo import ModelVersionUnavailable, current_model_version
from portal.api.permissions import needs
from portal.api.views.base import PortalAPIView, get_or_not_found
from portal.registry import selectors
from portal.registry.models import CalibrationActivation, SiteCalibration

READ = ("registry.view_sitecalibration",)


class CalibrationOutput(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.get_username")
    threshold = serializers.FloatField(allow_null=True)

    class Meta:
        model = SiteCalibration
        fields = (
            "id",
            "model_version",
            "version",
            "scanner_manufacturer",
            "scanner_model",
            "target_sensitivity",
            "threshold",
            "ood_site_threshold",
            "reads",
            "created_by",
            "created_at",
        )
        read_only_fields = fields


class CalibrationDetailOutput(CalibrationOutput):
    class Meta(CalibrationOutput.Meta):
        fields = (*CalibrationOutput.Meta.fields, "parameters", "evaluation")
        read_only_fields = fields


class ActivationOutput(serializers.ModelSerializer):
    calibration = CalibrationOutput(allow_null=True)
    in_use = serializers.SerializerMethodField()
    activated_by = serializers.CharField(source="activated_by.get_username")

    class Meta:
        model = CalibrationActivation
        fields = (
            "scanner_manufacturer",
            "scanner_model",
            "calibration",
            "in_use",
            "activated_at",
            "activated_by",
            "reason",
            "rescored",
        )
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.INT)
    def get_in_use(self, activation: CalibrationActivation) -> int | None:
        """The calibration the scope's analyses are shown with: its own, or (a scanner
        model without one) the site's; null: the model's own."""
        in_use = selectors.site_calibration_in_use(
            model_version=activation.model_version, scanner=activation.scanner
        )
        return in_use.pk if in_use else None


def _model_version(request: Request) -> str:
    wanted = request.query_params.get("model_version", "").strip()
    if wanted:
        return wanted
    try:
        return current_model_version()
    except ModelVersionUnavailable:
        return ""


MODEL_VERSION = OpenApiParameter(
    "model_version",
    str,
    description="The model version (default: the active one's)",
)


class CalibrationListView(PortalAPIView, generics.ListAPIView):
    serializer_class = CalibrationOutput
    keyset_ordering = ("-id",)
    required_permissions = needs(GET=READ)

    def get_queryset(self) -> QuerySet[SiteCalibration]:
        rows = SiteCalibration.objects.select_related("created_by")
        wanted = self.request.query_params.get("model_version", "").strip()
        return rows.filter(model_version=wanted) if wanted else rows

    @extend_schema(
        summary="List site calibrations (newest first)",
        parameters=[
            OpenApiParameter(
                "model_version", str, description="Only this model version's"
            )
        ],
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


class CalibrationDetailView(PortalAPIView):
    required_permissions = needs(GET=READ)

    @extend_schema(
        summary="A site calibration with its cross-validated before/after",
        responses=CalibrationDetailOutput,
    )
    def get(self, request: Request, pk: int) -> Response:
        calibration = get_or_not_found(
            SiteCalibration.objects.select_related("created_by"), pk
        )
        return Response(CalibrationDetailOutput(calibration).data)


class CalibrationActiveView(PortalAPIView):
    required_permissions = needs(GET=READ)

    @extend_schema(
        summary="What is active, site-wide and per scanner model",
        parameters=[MODEL_VERSION],
        responses=ActivationOutput(many=True),
    )
    def get(self, request: Request) -> Response:
        model_version = _model_version(request)
        activations = selectors.calibration_activations_latest(
            model_version=model_version
        )
        return Response(
            {
                "model_version": model_version,
                "results": ActivationOutput(activations, many=True).data,
            }
        )
