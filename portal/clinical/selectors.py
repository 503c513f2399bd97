"""Reads for patients, studies and scans."""

from __future__ import annotations

from django.db.models import Count, Q, QuerySet

from portal.clinical.models import Patient, Scan, Study


def patient_list(*, search: str = "") -> QuerySet[Patient]:
    patients = Patient.objects.annotate(study_count=Count("studies"))
    if search:
        patients = patients.filter(
            Q(identifier__icontains=search) | Q(name__icontains=search)
        )
    return patients.order_by("identifier")


def patient_studies(*, patient: Patient) -> QuerySet[Study]:
    return patient.studies.annotate(scan_count=Count("scans")).order_by(
        "-study_date", "-id"
    )


def study_scans(*, study: Study) -> QuerySet[Scan]:
    return study.scans.prefetch_related("analyses").order_by("uploaded_at", "id")
