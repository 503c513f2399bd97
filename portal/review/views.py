from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from ml.site_calibration import MIN_READS_FOR_SITE_CALIBRATION
from portal.accounts.roles import require_permissions
from portal.analyses.modelinfo import ModelVersionUnavailable, current_model_version
from portal.analyses.models import Analysis
from portal.analyses.selectors import (
    LesionMalignancy,
    lesion_malignancies,
    study_malignancies,
    viewer_layers,
)
from portal.audit.services import Action, record_access, record_accesses
from portal.clinical.models import Lesion, Scan, Study
from portal.clinical.scanners import Scanner
from portal.clinical.selectors import study_lesions
from portal.clinical.services import (
    lesion_record_pathology,
    scan_display_name,
    study_record_pathology,
)
from portal.keyset import InvalidCursor
from portal.registry import selectors as registry_selectors
from portal.registry.models import SiteCalibration
from portal.review import calibration as site_calibration
from portal.review import selectors, services
from portal.review.filters import DashboardFilterForm
from portal.review.formats import SHOWN_DIGITS, percent_text
from portal.review.forms import (
    CalibrationFitForm,
    PathologyForm,
    ReviewForm,
    scope_name,
)
from portal.review.imaging import outline_layer_png
from portal.review.models import CalibrationFit, Review
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


# The dashboard's page cursors (portal.keyset): after one row (older), before one (newer).
CURSOR_PARAMS = ("after", "before")


@require_GET
@require_permissions(*READ_RESULTS)
def dashboard(request: HttpRequest) -> HttpResponse:
    facts = selectors.filter_facts(search=request.GET.get("q", ""))
    form = DashboardFilterForm(request.GET or None, model_versions=facts.model_versions)
    ignored = form.ignored()
    filters = facts.read(form.filters())
    rows = selectors.dashboard_rows(filters)
    counts = selectors.dashboard_counts(rows)
    walk = {
        "size": PAGE_SIZE,
        "matching": selectors.dashboard_matching(counts),
        "order": selectors.dashboard_order(filters),
    }
    try:
        page = selectors.dashboard_page(
            rows,
            after=request.GET.get("after"),
            before=request.GET.get("before"),
            **walk,
        )
    except InvalidCursor:
        page = selectors.dashboard_page(rows, **walk)
        ignored.append(
            "Page position: not one of this list's; the newest rows are shown"
        )
    record_accesses(request, page.object_list, action=Action.VIEW, detail="dashboard")
    # The filters, kept in every page link; the cursors are the link's own.
    query = request.GET.copy()
    for name in (*CURSOR_PARAMS, "page"):
        query.pop(name, None)
    return render(
        request,
        "review/dashboard.html",
        {
            "form": form,
            "ignored": ignored,
            "page": page,
            "counts": counts,
            "queue": selectors.queue_state(),
            "query": query.urlencode(),
            "study_malignancies": study_malignancies(
                study_ids={row.scan.study_id for row in page}
            ),
            "row_lesions": _row_lesions(page.object_list),
        },
    )


def _row_lesions(rows: list[Analysis]) -> dict[int, LesionMalignancy]:
    """The lesions of the rows' grouped scans, by lesion id, with their results: two
    queries for the page, none where no row's scan is in a lesion."""
    study_ids = {row.scan.study_id for row in rows if row.scan.lesion_id is not None}
    return {
        lesion.lesion_id: lesion
        for lesions in lesion_malignancies(study_ids=study_ids).values()
        for lesion in lesions
    }


@require_GET
@require_permissions("review.view_worklist", *READ_RESULTS)
def worklist(request: HttpRequest) -> HttpResponse:
    ignored: list[str] = []
    try:
        page = selectors.worklist_page(
            size=PAGE_SIZE,
            after=request.GET.get("after"),
            before=request.GET.get("before"),
        )
    except InvalidCursor:
        page = selectors.worklist_page(size=PAGE_SIZE)
        ignored.append("Page position: not one of this list's; the top is shown")
    studies = page.object_list
    _mark_ties(studies)
    study_ids = [study.pk for study in studies]
    record_accesses(request, studies, action=Action.VIEW, detail="worklist")
    # Reading starts at the top of the worklist, whichever page is shown.
    top = (
        studies[0] if studies and not page.has_previous() else selectors.worklist_top()
    )
    return render(
        request,
        "review/worklist.html",
        {
            "page": page,
            "ignored": ignored,
            "studies": studies,
            # The navigation's count is the page's (counted once).
            "worklist_count": page.count,
            "first_unsigned": top.next_scan_id if top else None,
            "study_malignancies": study_malignancies(study_ids=study_ids),
            # The page's lesions, a hint per row: two queries for the whole page.
            "lesion_malignancies": lesion_malignancies(study_ids=study_ids),
        },
    )


def _mark_ties(studies: list[Study]) -> None:
    """Where neighbouring rows show the same percent, show them with a second decimal
    (malignant_shown), so the order the list is in can be seen."""
    shown = [percent_text(s.max_malignant) for s in studies]
    for index, study in enumerate(studies):
        ties = any(
            0 <= other < len(studies) and shown[other] == shown[index]
            for other in (index - 1, index + 1)
        )
        study.malignant_shown = percent_text(
            study.max_malignant, SHOWN_DIGITS + 1 if ties else SHOWN_DIGITS
        )


def _selected_analysis(request: HttpRequest, analyses: list[Analysis]) -> Analysis:
    wanted = request.GET.get("analysis") or request.POST.get("analysis")
    if wanted:
        for analysis in analyses:
            if str(analysis.pk) == wanted:
                return analysis
        raise Http404("no such analysis of this scan")
    finished = [a for a in analyses if a.status == Analysis.Status.SUCCEEDED]
    return (finished or analyses)[0]


# The reading flows a review page moves through: the worklist's unsigned scans, or (the
# default, as opened from a study page) the unsigned scans of the scan's study.
FLOWS = ("worklist", "study")


def _flow(request: HttpRequest) -> str:
    flow = request.POST.get("flow") or request.GET.get("flow") or "study"
    return flow if flow in FLOWS else "study"


def _reading_place(flow: str, scan: Scan) -> selectors.ReadingPlace:
    return selectors.reading_place(
        scan_id=scan.pk, study_id=scan.study_id, only_study=flow == "study"
    )


def _review_url(scan_id: int, flow: str) -> str:
    return f"{reverse('review:scan_review', args=[scan_id])}?flow={flow}"


def _after_signing(flow: str, scan: Scan, place: selectors.ReadingPlace) -> str:
    """Where "Sign and next" goes: the next unsigned scan of the flow, or, when none
    is left, the worklist or the study page it came from."""
    if place.after_signing is not None:
        return _review_url(place.after_signing, flow)
    if flow == "worklist":
        return reverse("review:worklist")
    return reverse("clinical:study_detail", args=[scan.study_id])


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
    flow = _flow(request)
    # Read before a signing takes this scan out of the queue: "next" is the scan that
    # followed it.
    place = _reading_place(flow, scan)

    form = ReviewForm(
        request.POST or None,
        initial=_initial(latest, analysis),
        model_label=analysis.label,
    )
    if request.method == "POST":
        action = request.POST.get("action")
        sign = action in ("sign", "sign_next")
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
                    f"{scan.original_filename}: review version {review.version} "
                    + ("signed." if review.is_signed else "saved as a draft."),
                )
                if warning := services.birads_warning(
                    label=review.label, birads=review.birads
                ):
                    messages.warning(request, f"{scan.original_filename}: {warning}")
                if action == "sign_next":
                    return redirect(_after_signing(flow, scan, place))
                return redirect(_review_url(scan.pk, flow))
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
            "flow": flow,
            "place": place,
            "next_url": _review_url(place.next, flow) if place.next else None,
            "previous_url": _review_url(place.previous, flow)
            if place.previous
            else None,
            "birads_at_odds": services.birads_at_odds(),
            "lesions": study_lesions(study=scan.study),
            "can_group": request.user.has_perm(services.GROUP_LESIONS),
            "lesion_locked": services.lesion_locked(latest=latest),
            # The navigation's count, already counted for the reading order.
            **({"worklist_count": place.studies} if flow == "worklist" else {}),
        },
    )


def _lesion_payload(scan: Scan) -> dict[str, Any]:
    """The scan's lesion and its study's lesions, for the review page's lesion control."""
    return {
        "lesion": scan.lesion_id,
        "lesions": [
            {"id": lesion.pk, "label": lesion.label, "images": lesion.image_count}
            for lesion in study_lesions(study=scan.study)
        ],
    }


def _posted_lesion(chosen: str) -> Lesion | None:
    """The lesion a form names by id ("" for none); whose study it is, the service checks."""
    if not chosen:
        return None
    lesion = Lesion.objects.filter(pk=chosen).first() if chosen.isdigit() else None
    if lesion is None:
        raise ValidationError(f"There is no lesion {chosen!r}.")
    return lesion


@require_POST
@require_permissions(*READ_RESULTS, "review.view_review", services.GROUP_LESIONS)
def scan_lesion(request: HttpRequest, pk: int) -> HttpResponse:
    """Group the scan with the other images of its study that show the same lesion:
    lesion=<id> of a lesion of its study, "new" for a new lesion, "" for none. Answers
    the page's script in JSON (so a draft being written is not lost), a plain form post
    with the review page again."""
    scan = get_object_or_404(Scan.objects.select_related("study"), pk=pk)
    chosen = request.POST.get("lesion", "").strip()
    wants_json = "application/json" in request.headers.get("Accept", "")
    error, lesion = "", None
    try:
        if chosen == "new":
            lesion = services.scan_lesion_new(scan=scan, user=request.user)
        else:
            lesion = _posted_lesion(chosen)
            services.scan_lesion_set(scan=scan, lesion=lesion, user=request.user)
    except ValidationError as exc:
        error = " ".join(exc.messages)
    scan.refresh_from_db(fields=["lesion"])
    if error:
        said = f"{scan.original_filename}: the lesion was not changed. {error}"
    elif lesion is None:
        said = f"{scan.original_filename}: in no lesion."
    else:
        said = f"{scan.original_filename}: lesion {lesion.label}."
    if wants_json:
        return _private(
            JsonResponse(
                {"message": said, **_lesion_payload(scan)},
                status=400 if error else 200,
            )
        )
    (messages.error if error else messages.success)(request, said)
    url = _review_url(scan.pk, _flow(request))
    if (analysis := request.POST.get("analysis", "")).isdigit():
        url += f"&analysis={analysis}"
    return redirect(url)


def _initial(latest: Review | None, analysis: Analysis) -> dict:
    """The form as the latest review left it; a corrected label only for a correction
    (the model's own label is no correction)."""
    if latest is None:
        if analysis.withheld:  # nothing of the model's to agree with
            return {"agrees_with_model": "no"}
        return {"agrees_with_model": "yes"}
    return {
        "agrees_with_model": "yes" if latest.agrees_with_model else "no",
        "label": "" if latest.agrees_with_model else latest.label,
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
    if analysis.withheld or not analysis.mask:
        raise Http404("this analysis has no mask")
    return _outline_layer(request, analysis, analysis.mask.name, detail="outline")


def _outline_layer(
    request: HttpRequest, target: Analysis | Review, mask_name: str, *, detail: str
) -> HttpResponse:
    """The boundary of a stored mask on a transparent layer (PNG), its access recorded."""
    try:
        content = outline_layer_png(mask_name)
    except FileNotFoundError:
        raise Http404("file is missing from storage") from None
    record_access(request, target, action=Action.DOWNLOAD, detail=detail)
    return _private(HttpResponse(content, content_type="image/png"))


def _corrected_review(pk: int) -> Review:
    review = get_object_or_404(Review, pk=pk)
    if not review.outline:
        raise Http404("this review has no corrected outline")
    return review


@require_GET
@require_permissions("clinical.view_scan", "review.view_review")
def review_outline(request: HttpRequest, pk: int) -> HttpResponse:
    """The reader's corrected lesion mask of one review version (1-bit PNG)."""
    review = _corrected_review(pk)
    record_access(request, review, action=Action.DOWNLOAD, detail="corrected outline")
    return stream_from_storage(
        review.outline.name, download_name=f"review-{review.pk}-outline"
    )


@require_GET
@require_permissions("clinical.view_scan", "review.view_review")
def review_outline_layer(request: HttpRequest, pk: int) -> HttpResponse:
    """The boundary of a review's corrected outline on a transparent layer."""
    review = _corrected_review(pk)
    return _outline_layer(
        request, review, review.outline.name, detail="corrected outline"
    )


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
        # Counting every version under a name that matches none would mislead.
        return render(
            request,
            "review/agreement.html",
            {
                "error": f"There is no model version {version!r}: choose one of "
                "the versions below, or all versions.",
                "versions": versions,
                "version": version,
                "labels": selectors.LABELS,
            },
            status=400,
        )
    stats = selectors.agreement(model_version=version)
    case_mix_version = version or _calibration_model_version(request)
    return render(
        request,
        "review/agreement.html",
        {
            "case_mix": site_calibration.case_mix(model_version=case_mix_version)
            if case_mix_version
            else None,
            "case_mix_version": case_mix_version,
            "unusual": site_calibration.unusual_by_rule(model_version=case_mix_version)
            if case_mix_version
            else None,
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


# --- site calibration (administrators) ------------------------------------------------


def _calibration_model_version(request: HttpRequest) -> str:
    """The model version the page is about: ?model_version= if known, else the
    installed model's."""
    wanted = request.GET.get("model_version") or request.POST.get("model_version")
    versions = selectors.model_versions()
    if wanted and wanted in versions:
        return wanted
    try:
        return current_model_version()
    except ModelVersionUnavailable:
        return versions[-1] if versions else ""


def _calibration_scanner(request: HttpRequest, *, posted: bool = False) -> Scanner:
    """The scope a page or a rollback is about: `scanner` (a scanner model's key) in the
    query (or, `posted`, the form), else the site."""
    source = request.POST if posted else request.GET
    try:
        return Scanner.from_key(source.get("scanner") or "")
    except ValueError:
        raise Http404("No such scanner model.") from None


def _calibration_url(model_version: str, scanner: Scanner) -> str:
    query = {"model_version": model_version}
    if not scanner.is_site:
        query["scanner"] = scanner.key
    return reverse("review:calibration") + "?" + urlencode(query)


@require_http_methods(["GET", "POST"])
@require_permissions("registry.view_sitecalibration")
def calibration(request: HttpRequest) -> HttpResponse:
    model_version = _calibration_model_version(request)
    scanner = _calibration_scanner(request)
    by_scanner = site_calibration.signed_reads_by_scanner(model_version=model_version)
    form = CalibrationFitForm(
        request.POST or None,
        scanners=by_scanner,
        initial={"scanner": scanner.key},
    )
    if request.method == "POST":
        if not request.user.has_perm("registry.add_sitecalibration"):
            raise PermissionDenied
        if form.is_valid():
            chosen = form.cleaned_data["scanner"]
            try:
                fit = site_calibration.calibration_fit_request(
                    model_version=model_version,
                    target_sensitivity=form.cleaned_data["target_sensitivity"],
                    requested_by=request.user,
                    scanner=chosen,
                )
            except ValidationError as exc:
                messages.error(request, " ".join(exc.messages))
            else:
                messages.success(
                    request,
                    f"Fit {fit.pk} queued: a worker fits it on the signed reads; this "
                    "page shows its result when it is done.",
                )
                return redirect(_calibration_url(model_version, chosen))
    return render(
        request,
        "review/calibration.html",
        {
            "model_version": model_version,
            "versions": selectors.model_versions(),
            "scanner": scanner,
            "scope_name": scope_name(scanner),
            "form": form,
            **_calibration_scope(model_version, scanner, by_scanner),
            "fits": CalibrationFit.objects.filter(model_version=model_version)
            .select_related("requested_by", "calibration")
            .order_by("-requested_at", "-id")[:10],
            "min_reads": MIN_READS_FOR_SITE_CALIBRATION,
            "can_fit": request.user.has_perm("registry.add_sitecalibration"),
            "can_activate": request.user.has_perm("registry.activate_sitecalibration"),
        },
    )


def _calibration_scope(
    model_version: str, scanner: Scanner, by_scanner: list[Any]
) -> dict[str, Any]:
    """What the page shows of one scope (the site, or a scanner model)."""
    active = registry_selectors.calibration_activation_latest(
        model_version=model_version, scanner=scanner
    )
    calibrations = [
        {
            "record": record,
            "rows": site_calibration.calibration_summary(record.evaluation),
            "svg": site_calibration.reliability_svg(record.evaluation),
            "unusual": record.evaluation.get("unusual"),
        }
        for record in registry_selectors.site_calibrations(
            model_version=model_version, scanner=scanner
        )
    ]
    reads = next((item for item in by_scanner if item.scanner == scanner), None)
    truth = (
        site_calibration.signed_reads(model_version=model_version, scanner=scanner)
        if reads
        else None
    )
    scanners = [
        {
            "scanner": item.scanner,
            "reads": item.reads,
            "in_use": registry_selectors.site_calibration_in_use(
                model_version=model_version, scanner=item.scanner
            ),
            "url": _calibration_url(model_version, item.scanner),
        }
        for item in by_scanner
    ]
    return {
        "active": active,
        "site_active": registry_selectors.site_calibration_active(
            model_version=model_version
        ),
        "calibrations": calibrations,
        "history": registry_selectors.calibration_activations(
            model_version=model_version, scanner=scanner
        )[:50],
        "reads": reads.reads if reads else 0,
        "reads_from_pathology": truth.from_pathology if truth else 0,
        "reads_from_lesion_pathology": truth.from_lesion_pathology if truth else 0,
        "scanners": scanners,
    }


@require_GET
@require_permissions("registry.view_sitecalibration")
def calibration_fit_status(request: HttpRequest, pk: int) -> HttpResponse:
    """The page's poll of a queued fit (aggregate only: no patient data)."""
    fit = get_object_or_404(CalibrationFit, pk=pk)
    return _private(JsonResponse(fit.to_status_dict()))


@require_POST
@require_permissions("registry.view_sitecalibration", "registry.add_sitecalibration")
def calibration_fit_retry(request: HttpRequest, pk: int) -> HttpResponse:
    fit = get_object_or_404(CalibrationFit, pk=pk)
    try:
        site_calibration.calibration_fit_retry(fit=fit)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"Fit {fit.pk} queued again.")
    return redirect(_calibration_url(fit.model_version, fit.scanner))


@require_POST
@require_permissions(
    "registry.view_sitecalibration", "registry.activate_sitecalibration"
)
def calibration_activate(request: HttpRequest, pk: int) -> HttpResponse:
    record = get_object_or_404(SiteCalibration, pk=pk)
    try:
        activation = site_calibration.site_calibration_activate(
            calibration=record, user=request.user
        )
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(
            request,
            f"Calibration {record.version} is active for "
            f"{'the whole site' if record.scanner.is_site else record.scanner.name}; "
            f"{activation.rescored} analyses re-scored from their stored logits.",
        )
    return redirect(_calibration_url(record.model_version, record.scanner))


@require_POST
@require_permissions(
    "registry.view_sitecalibration", "registry.activate_sitecalibration"
)
def calibration_rollback(request: HttpRequest) -> HttpResponse:
    model_version = _calibration_model_version(request)
    scanner = _calibration_scanner(request, posted=True)
    try:
        activation = site_calibration.site_calibration_rollback(
            model_version=model_version, user=request.user, scanner=scanner
        )
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        if activation.calibration:
            target = f"calibration {activation.calibration.version}"
        elif scanner.is_site:
            target = "the model's own calibration"
        else:
            target = "the site's calibration"
        messages.success(
            request,
            f"Rolled back to {target}; {activation.rescored} analyses re-scored.",
        )
    return redirect(_calibration_url(model_version, scanner))


# --- pathology outcome ------------------------------------------------------------------


@require_POST
@require_permissions("clinical.view_study", "clinical.record_pathology")
def study_pathology(request: HttpRequest, pk: int) -> HttpResponse:
    study = get_object_or_404(Study, pk=pk)
    form = PathologyForm(request.POST)
    if not form.is_valid():
        messages.error(
            request, f"The biopsy outcome was not recorded: {form.errors.as_text()}"
        )
        return redirect(study)
    try:
        study_record_pathology(
            study=study,
            outcome=form.cleaned_data["outcome"],
            biopsy_date=form.cleaned_data["biopsy_date"],
            entered_by=request.user,
        )
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, "Biopsy outcome recorded.")
    return redirect(study)


@require_POST
@require_permissions("clinical.view_study", "clinical.record_pathology")
def lesion_pathology(request: HttpRequest, pk: int) -> HttpResponse:
    """Record (or clear) the biopsy outcome of one lesion, from the study page."""
    lesion = get_object_or_404(Lesion.objects.select_related("study"), pk=pk)
    study = lesion.study
    form = PathologyForm(request.POST)
    if not form.is_valid():
        messages.error(
            request,
            f"The biopsy outcome of lesion {lesion.label} was not recorded: "
            f"{form.errors.as_text()}",
        )
        return redirect(study)
    try:
        lesion = lesion_record_pathology(
            lesion=lesion,
            outcome=form.cleaned_data["outcome"],
            biopsy_date=form.cleaned_data["biopsy_date"],
            entered_by=request.user,
        )
    except ValidationError as exc:
        messages.error(
            request,
            f"The biopsy outcome of lesion {lesion.label} was not recorded: "
            + " ".join(exc.messages),
        )
    else:
        messages.success(
            request,
            f"Biopsy outcome of lesion {lesion.label} recorded."
            if lesion.pathology
            else f"Biopsy outcome of lesion {lesion.label} cleared.",
        )
    return redirect(study)
