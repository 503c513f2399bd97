from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied, TooManyFilesSent
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from portal.accounts.roles import require_permissions
from portal.analyses.modelinfo import ModelVersionUnavailable
from portal.analyses.selectors import study_lesion_malignancies, study_malignancy
from portal.analyses.selectors import study_status as study_status_entries
from portal.audit.services import Action, record_access, record_accesses
from portal.clinical import selectors, services
from portal.clinical.forms import PatientForm, ScanUploadForm, StudyForm
from portal.clinical.models import Patient, Scan, Study
from portal.ingest.models import UploadBatch, UploadItem
from portal.ingest.services import IngestResult, upload_to_study
from portal.review.selectors import scan_review_states, study_review_state
from portal.storage_views import stream_from_storage

PAGE_SIZE = 50


@require_permissions("clinical.view_patient")
def patient_list(request: HttpRequest) -> HttpResponse:
    search = request.GET.get("q", "").strip()
    if request.method == "POST" and not request.user.has_perm("clinical.add_patient"):
        raise PermissionDenied
    form = PatientForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        patient = services.patient_create(**form.cleaned_data)
        messages.success(request, f"Patient {patient.identifier} created.")
        return redirect(patient)
    page = Paginator(selectors.patient_list(search=search), PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    record_accesses(
        request,
        page.object_list,
        action=Action.VIEW,
        detail="patient search" if search else "patient list",
    )
    return render(
        request,
        "clinical/patient_list.html",
        {
            "page": page,
            "form": form,
            "search": search,
            "query": urlencode({"q": search}) if search else "",
        },
    )


@require_permissions("clinical.view_patient", "clinical.view_study")
def patient_detail(request: HttpRequest, pk: int) -> HttpResponse:
    patient = get_object_or_404(Patient, pk=pk)
    if request.method == "POST" and not request.user.has_perm("clinical.add_study"):
        raise PermissionDenied
    form = StudyForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        study = services.study_create(
            patient=patient, created_by=request.user, **form.cleaned_data
        )
        messages.success(request, "Study created. Upload its images below.")
        return redirect(study)
    if request.method == "GET":
        record_access(request, patient, action=Action.VIEW, detail="patient page")
    return render(
        request,
        "clinical/patient_detail.html",
        {
            "patient": patient,
            "studies": selectors.patient_studies(patient=patient),
            "form": form,
        },
    )


@require_permissions("clinical.view_study", "clinical.view_scan")
def study_detail(request: HttpRequest, pk: int) -> HttpResponse:
    study = get_object_or_404(Study.objects.select_related("patient"), pk=pk)
    record_access(request, study, action=Action.VIEW, detail="study page")
    return render(
        request,
        "clinical/study_detail.html",
        {
            "study": study,
            "patient": study.patient,
            "entries": study_status_entries(study=study),
            "form": ScanUploadForm(),
            "rejections": request.session.pop(f"rejections-{study.pk}", []),
            "review_state": study_review_state(study=study),
            "scan_reviews": scan_review_states(study=study),
            "study_malignancy": study_malignancy(study=study),
            "lesion_malignancies": study_lesion_malignancies(study=study),
            "lesions": selectors.study_lesions(study=study),
        },
    )


@dataclass(frozen=True)
class Rejection:
    filename: str
    reason: str


@require_POST
@require_permissions("clinical.view_study", "clinical.add_scan")
def study_upload(request: HttpRequest, pk: int) -> HttpResponse:
    """Store every file that decodes (zips member by member); list the others with the
    reason they were refused, and images uploaded before as duplicates."""
    study = get_object_or_404(Study, pk=pk)
    wants_json = "application/json" in request.headers.get("Accept", "")
    try:
        files = request.FILES.getlist("files")
    except TooManyFilesSent:
        return _upload_response(
            request,
            study,
            error=f"At most {settings.DATA_UPLOAD_MAX_NUMBER_FILES} files at once; "
            "put more in a zip.",
            wants_json=wants_json,
        )
    if not files:
        return _upload_response(
            request, study, error="Choose at least one file.", wants_json=wants_json
        )
    try:
        result = upload_to_study(
            study=study,
            files=files,
            uploaded_by=request.user,
            source=UploadBatch.Source.WEB,
        )
    except ModelVersionUnavailable as exc:
        return _upload_response(
            request,
            study,
            error=f"Uploads are paused: {exc}",
            wants_json=wants_json,
            status=503,
        )
    return _upload_response(request, study, result=result, wants_json=wants_json)


def _upload_response(
    request: HttpRequest,
    study: Study,
    *,
    wants_json: bool,
    result: IngestResult | None = None,
    error: str | None = None,
    status: int | None = None,
) -> HttpResponse:
    Outcome = UploadItem.Outcome
    accepted = result.of(Outcome.ACCEPTED) if result else []
    duplicates = result.of(Outcome.DUPLICATE) if result else []
    rejected = [
        Rejection(item.filename, item.reason)
        for item in (result.of(Outcome.REJECTED) if result else [])
    ]
    if wants_json:
        body = {
            "batch": result.batch.pk if result else None,
            "progress_url": (
                reverse("ingest:batch_progress", args=[result.batch.pk])
                if result
                else None
            ),
            "accepted": [
                {"scan_id": i.scan_id, "filename": i.filename} for i in accepted
            ],
            "duplicates": [
                {"scan_id": i.scan_id, "filename": i.filename, "reason": i.reason}
                for i in duplicates
            ],
            "rejected": [
                {"filename": r.filename, "reason": r.reason} for r in rejected
            ],
            "error": error,
        }
        return JsonResponse(body, status=status or (400 if error else 200))
    if error:
        messages.error(request, error)
    if accepted:
        messages.success(
            request, f"{len(accepted)} image(s) uploaded and queued for analysis."
        )
    if duplicates:
        messages.info(
            request,
            f"{len(duplicates)} image(s) had been uploaded before: linked to their "
            "existing scans, not analysed again.",
        )
    if rejected:
        request.session[f"rejections-{study.pk}"] = [
            {"filename": r.filename, "reason": r.reason} for r in rejected
        ]
    return redirect(study)


@never_cache
@require_GET
@require_permissions("clinical.view_study", "analyses.view_analysis")
def study_status(request: HttpRequest, pk: int) -> JsonResponse:
    study = get_object_or_404(Study, pk=pk)
    record_access(request, study, action=Action.VIEW, detail="status poll")
    return JsonResponse(
        {
            "study_id": study.pk,
            "review_state": study_review_state(study=study),
            "scans": study_status_entries(study=study),
        }
    )


@require_GET
@require_permissions("clinical.view_scan")
def scan_original(request: HttpRequest, pk: int) -> StreamingHttpResponse:
    scan = get_object_or_404(Scan, pk=pk)
    record_access(request, scan, action=Action.DOWNLOAD, detail="original")
    return stream_from_storage(scan.original.name, download_name=f"scan-{scan.pk}")
