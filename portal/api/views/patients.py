"""Patients: list (searched like the patient page), register, read."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics
from rest_framework.request import Request
from rest_framework.response import Response

from portal.api.permissions import needs
from portal.api.serializers import (
    PatientSerializer,
)
from portal.api.views.base import (
    PortalAPIView,
    RecordedListMixin,
    get_or_not_found,
)
from portal.audit.services import Action, record_access
from portal.clinical import selectors
from portal.clinical.models import Patient
from portal.clinical.services import patient_create


class PatientListView(RecordedListMixin, PortalAPIView, generics.ListCreateAPIView):
    serializer_class = PatientSerializer
    keyset_ordering = ("identifier",)  # unique (see portal.api.pagination)
    access_detail = "api patient list"
    required_permissions = needs(
        GET=("clinical.view_patient",),
        POST=("clinical.view_patient", "clinical.add_patient"),
    )

    def get_queryset(self) -> QuerySet[Patient]:
        search = self.request.query_params.get("search", "").strip()
        return selectors.patient_list(search=search)

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
        patient = get_or_not_found(Patient.objects.all(), self.kwargs["pk"])
        record_access(self.request, patient, action=Action.VIEW, detail="api patient")
        return patient
