from __future__ import annotations

import logging

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from portal.accounts.roles import require_permissions
from portal.analyses.models import Analysis
from portal.analyses.selectors import viewer_layers
from portal.audit.services import Action, record_access
from portal.clinical.models import Scan, Study
from portal.clinical.services import scan_display_name
from portal.review import selectors, services
from portal.review.filters import DashboardFilterForm
from portal.review.forms import ReviewForm
from portal.review.imaging import outline_layer_png
from portal.review.models import Review
from portal.review.report import study_report_pdf
from portal.storage_views import stream_from_storage

logger = logging.getLogger(__name__)

PAGE_SIZE = 50
READ_RESULTS = ("clinical.view_study", "clinical.view_scan", "analyses.view_analysis")
WRITE_REVIEW = ("review.add_review", "review.change_review")


def _private(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "private, max-age=0, no-store"
    response["X-Content-Type-Options"] = "nosniff"
    return response


@require_GET
@require_permissions(*READ_RESULTS)
def dashboard(request: HttpRequest) -> HttpResponse:
    versions = selectors.model_versions()
    form = DashboardFilterForm(request.GET or None, model_versions=versions)
    rows = selectors.dashboard_rows(form.filters())
    counts = selectors.dashboard_counts(rows)
    paginator = Paginator(selectors.DashboardPages(rows), PAGE_SIZE)
    # Every row has one status: the counts already say how many rows there are.
    paginator.count = sum(counts["statuses"].values())
    page = paginator.get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "review/dashboard.html",
        {
            "form": form,
            "page": page,
            "counts": counts,
            "queue": selectors.queue_state(),
            "query": query.urlencode(),
        },
    )


@require_GET
@require_permissions("review.view_worklist", *READ_RESULTS)
def worklist(request: HttpRequest) -> HttpResponse:
    page = Paginator(selectors.worklist(), PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "review/worklist.html", {"page": page})


def _selected_analysis(request: HttpRequest, analyses: list[Analysis]) -> Analysis:
    wanted = request.GET.get("analysis") or request.POST.get("analysis")
    if wanted:
        for analysis in analyses:
            if str(analysis.pk) == wanted:
                return analysis
        raise Http404("no such analysis of this scan")
    finished = [a for a in analyses if a.status == Analysis.Status.SUCCEEDED]
    return (finished or analyses)[0]


@require_http_methods(["GET", "POST"])
@require_permissions(*READ_RESULTS, "review.view_review")
def scan_review(request: HttpRequest, pk: int) -> HttpResponse:
    scan = get_object_or_404(Scan.objects.select_related("study__patient"), pk=pk)
    analyses = selectors.scan_analyses(scan=scan)
    if not analyses:
        raise Http404("this scan has no analysis")
    analysis = _selected_analysis(request, analyses)
    reviews = selectors.scan_reviews(scan=scan)
    latest = reviews[0] if reviews else None
    can_write = request.user.has_perms(WRITE_REVIEW)
    can_sign = request.user.has_perm("review.sign_review")
    draft_is_others = (
        latest is not None
        and not latest.is_signed
        and latest.author_id != request.user.pk
    )

    form = ReviewForm(request.POST or None, initial=_initial(latest, analysis))
    if request.method == "POST":
        sign = request.POST.get("action") == "sign"
        if not can_write or (sign and not can_sign):
            raise PermissionDenied
        if form.is_valid():
            try:
                review = services.review_save(
                    analysis=analysis,
                    author=request.user,
                    sign=sign,
                    **form.cleaned_data,
                )
            except ValidationError as exc:
                messages.error(request, " ".join(exc.messages))
            else:
                messages.success(
                    request,
                    f"Review version {review.version} "
                    + ("signed." if review.is_signed else "saved as a draft."),
                )
                return redirect("review:scan_review", pk=scan.pk)
    else:
        record_access(request, scan, action=Action.VIEW, detail="review page")

    layers = viewer_layers(analysis)
    signed = next((r for r in reviews if r.is_signed), None)
    if (signed_layer := selectors.signed_outline_layer(signed)) is not None:
        layers.append(signed_layer)
    return render(
        request,
        "review/scan_review.html",
        {
            "scan": scan,
            "study": scan.study,
            "patient": scan.study.patient,
            "analysis": analysis,
            "analyses": analyses,
            "reviews": reviews,
            "latest": latest,
            "form": form,
            "can_write": can_write and not draft_is_others,
            "can_sign": can_sign,
            "draft_is_others": draft_is_others,
            "layers": layers,
            "area_mm2": scan.area_mm2(analysis.lesion_area_fraction),
            "display_url": reverse("review:scan_display", args=[scan.pk]),
        },
    )


def _initial(latest: Review | None, analysis: Analysis) -> dict:
    if latest is None:
        return {"agrees_with_model": "yes", "label": analysis.label}
    return {
        "agrees_with_model": "yes" if latest.agrees_with_model else "no",
        "label": latest.label,
        "birads": latest.birads,
        "note": latest.note,
    }


@require_GET
@require_permissions("clinical.view_scan")
def scan_display(request: HttpRequest, pk: int) -> HttpResponse:
    scan = get_object_or_404(Scan, pk=pk)
    try:
        name = scan_display_name(scan=scan)
    except FileNotFoundError:
        raise Http404("file is missing from storage") from None
    record_access(request, scan, action=Action.DOWNLOAD, detail="display image")
    return stream_from_storage(name, download_name=f"scan-{scan.pk}-display")


@require_GET
@require_permissions("clinical.view_scan", "analyses.view_analysis")
def analysis_outline(request: HttpRequest, pk: int) -> HttpResponse:
    analysis = get_object_or_404(Analysis, pk=pk)
    if not analysis.mask:
        raise Http404("this analysis has no mask")
    try:
        content = outline_layer_png(analysis.mask.name)
    except FileNotFoundError:
        raise Http404("file is missing from storage") from None
    record_access(request, analysis, action=Action.DOWNLOAD, detail="outline")
    return _private(HttpResponse(content, content_type="image/png"))


@require_GET
@require_permissions("clinical.view_scan", "review.view_review")
def review_outline(request: HttpRequest, pk: int) -> HttpResponse:
    """The reader's corrected lesion mask of one review version (1-bit PNG)."""
    review = get_object_or_404(Review, pk=pk)
    if not review.outline:
        raise Http404("this review has no corrected outline")
    record_access(request, review, action=Action.DOWNLOAD, detail="corrected outline")
    return stream_from_storage(
        review.outline.name, download_name=f"review-{review.pk}-outline"
    )


@require_GET
@require_permissions("clinical.view_scan", "review.view_review")
def review_outline_layer(request: HttpRequest, pk: int) -> HttpResponse:
    """The boundary of a review's corrected outline on a transparent layer."""
    review = get_object_or_404(Review, pk=pk)
    if not review.outline:
        raise Http404("this review has no corrected outline")
    try:
        content = outline_layer_png(review.outline.name)
    except FileNotFoundError:
        raise Http404("file is missing from storage") from None
    record_access(request, review, action=Action.DOWNLOAD, detail="corrected outline")
    return _private(HttpResponse(content, content_type="image/png"))


@require_GET
@require_permissions(*READ_RESULTS, "review.view_review")
def study_report(request: HttpRequest, pk: int) -> HttpResponse:
    study = get_object_or_404(Study.objects.select_related("patient"), pk=pk)
    content = study_report_pdf(study=study, generated_by=request.user)
    record_access(request, study, action=Action.DOWNLOAD, detail="report")
    response = HttpResponse(content, content_type="application/pdf")
    # Ids only: patient data never goes into a file name.
    response["Content-Disposition"] = (
        f'attachment; filename="study-{study.pk}-report.pdf"'
    )
    return _private(response)


@require_GET
@require_permissions("review.view_agreement")
def agreement(request: HttpRequest) -> HttpResponse:
    versions = selectors.model_versions()
    version = request.GET.get("model_version", "")
    if version and version not in versions:
        version = ""
    stats = selectors.agreement(model_version=version)
    return render(
        request,
        "review/agreement.html",
        {
            "stats": stats,
            "versions": versions,
            "version": version,
            "labels": selectors.LABELS,
            "chart": _chart(stats.per_month),
        },
    )


def _chart(months: list[dict]) -> dict | None:
    """Points of an SVG line chart of the monthly agreement rate (0-100 %)."""
    points = [m for m in months if m["rate"] is not None]
    if not points:
        return None
    width, height, pad = 640, 220, 36
    step = (width - 2 * pad) / max(1, len(points) - 1)
    coords = []
    for index, month in enumerate(points):
        x = pad + index * step if len(points) > 1 else width / 2
        y = pad + (1 - month["rate"]) * (height - 2 * pad)
        coords.append(
            {
                "x": round(x, 1),
                "y": round(y, 1),
                "label": month["month"].strftime("%Y-%m"),
                "rate": month["rate"],
                "total": month["total"],
            }
        )
    return {
        "width": width,
        "height": height,
        "pad": pad,
        "bottom": height - pad,
        "right": width - pad,
        "mid": (height) / 2,
        "polyline": " ".join(f"{c['x']},{c['y']}" for c in coords),
        "points": coords,
    }
