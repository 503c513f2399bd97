"""Downloads of an analysis's DICOM objects, permission-checked and audited."""

from __future__ import annotations

import io
import zipfile

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_GET

from portal.accounts.roles import require_permissions
from portal.analyses.models import Analysis
from portal.audit.services import Action, record_access
from portal.dicomnet import services
from portal.dicomnet.results import KINDS, ResultsUnavailable, encode

# The SR carries the radiologist's signed reading: reading reviews is needed too.
READ = (
    "clinical.view_scan",
    "analyses.view_analysis",
    "review.view_review",
)


def dicom_response(content: bytes, *, filename: str, content_type: str) -> HttpResponse:
    response = HttpResponse(content, content_type=content_type)
    # Ids only: patient data never goes into a file name.
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "private, max-age=0, no-store"
    response["X-Content-Type-Options"] = "nosniff"
    return response


def results_file(analysis: Analysis, kind: str) -> tuple[bytes, str, str]:
    """(content, file name, content type) of one object, or of all as a zip ("zip")."""
    if kind != "zip" and kind not in KINDS:
        raise Http404("no such DICOM object")
    try:
        results = services.results_of(analysis=analysis)
    except ResultsUnavailable as exc:
        raise Http404(str(exc)) from None
    if kind == "zip":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, dataset in results.names.items():
                archive.writestr(f"analysis-{analysis.pk}-{name}.dcm", encode(dataset))
        return buffer.getvalue(), f"analysis-{analysis.pk}-dicom.zip", "application/zip"
    dataset = results.names.get(kind)
    if dataset is None and analysis.withheld:
        raise Http404(
            "not analysed: not a breast ultrasound image; only its SR (saying so) exists"
        )
    if dataset is None:
        raise Http404("this scan was DICOM: it is its own source")
    return (
        encode(dataset),
        f"analysis-{analysis.pk}-{kind}.dcm",
        "application/dicom",
    )


@require_GET
@require_permissions(*READ)
def analysis_dicom(request: HttpRequest, pk: int, kind: str) -> HttpResponse:
    analysis = get_object_or_404(
        Analysis.objects.select_related("scan__study__patient"), pk=pk
    )
    content, filename, content_type = results_file(analysis, kind)
    record_access(request, analysis, action=Action.DOWNLOAD, detail=f"dicom {kind}")
    return dicom_response(content, filename=filename, content_type=content_type)
