"""The model registry page (/models/, administrators): installed versions with their
cards, lineage and comparison reports; promote (with a reason; a second administrator
confirms one the comparison does not support), roll back, shadow. Thin: the rules and
the audit trail are portal.registry.services'."""

from __future__ import annotations

from collections.abc import Callable

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from portal.accounts.roles import require_permissions
from portal.registry import selectors as registry_selectors
from portal.registry import services as registry
from portal.registry.models import ModelActivation, ModelVersion, PromotionRequest
from portal.review import model_registry

VIEW = "registry.view_modelversion"
PROMOTE = "registry.promote_modelversion"


def _back() -> HttpResponse:
    return redirect(reverse("review:models"))


def _done(request: HttpRequest, action: Callable[[], str]) -> HttpResponse:
    try:
        text = action()
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, text)
    return _back()


@require_GET
@require_permissions(VIEW)
def models_page(request: HttpRequest) -> HttpResponse:
    """Read only: the changes are the POST views below."""
    active = registry_selectors.model_version_active()
    shadow = registry_selectors.model_version_shadow()
    versions = model_registry.version_views(
        registry_selectors.model_versions_shown(), active=active, shadow=shadow
    )
    return render(
        request,
        "review/models.html",
        {
            "active": active,
            "shadow": shadow,
            "versions": versions,
            "requests": registry_selectors.promotion_requests_pending(),
            "history": registry_selectors.model_activations()[:50],
            "agreement": model_registry.shadow_agreement(shadow=shadow)
            if shadow
            else None,
            "can_promote": request.user.has_perm(PROMOTE),
            "can_roll_back": registry_selectors.model_activation_latest(
                role=ModelActivation.Role.ACTIVE
            )
            is not None,
            "measures": model_registry.COMPARISON_MEASURES,
        },
    )


@require_POST
@require_permissions(VIEW, PROMOTE)
def model_upload(request: HttpRequest) -> HttpResponse:
    """A model folder, zipped, installed (not active: promoting it is another step)."""
    archive = request.FILES.get("archive")
    if archive is None:
        messages.error(request, "Choose the zipped model folder to upload.")
        return _back()

    def install() -> str:
        record, left_out = registry.model_version_upload(
            archive=archive, installed_by=request.user
        )
        ignored = (
            f" Left out of the archive: {', '.join(sorted(left_out)[:10])}"
            f"{' …' if len(left_out) > 10 else ''}."
            if left_out
            else ""
        )
        compared = (
            ""
            if record.comparison
            else " It has no comparison report: promoting "
            "it will need a second administrator."
        )
        return f"{record.version} is installed, not active.{compared}{ignored}"

    return _done(request, install)


@require_POST
@require_permissions(VIEW, PROMOTE)
def model_promote(request: HttpRequest, pk: int) -> HttpResponse:
    record = get_object_or_404(ModelVersion, pk=pk)
    reason = request.POST.get("reason", "")

    def promote() -> str:
        if request.POST.get("request_confirmation"):
            registry.model_promotion_request(
                model_version=record, user=request.user, reason=reason
            )
            return (
                f"Promotion of {record.version} requested: another administrator must "
                "confirm it."
            )
        registry.model_promote(model_version=record, user=request.user, reason=reason)
        return f"{record.version} is active: new analyses are made by it."

    return _done(request, promote)


@require_POST
@require_permissions(VIEW, PROMOTE)
def model_promotion_confirm(request: HttpRequest, pk: int) -> HttpResponse:
    pending = get_object_or_404(PromotionRequest, pk=pk)

    def confirm() -> str:
        activation = registry.model_promotion_confirm(
            request=pending, user=request.user
        )
        return (
            f"{activation.model_version} is active (confirmed by you, asked by "
            f"{pending.requested_by.get_username()})."
        )

    return _done(request, confirm)


@require_POST
@require_permissions(VIEW, PROMOTE)
def model_promotion_withdraw(request: HttpRequest, pk: int) -> HttpResponse:
    pending = get_object_or_404(PromotionRequest, pk=pk)

    def withdraw() -> str:
        registry.model_promotion_withdraw(request=pending, user=request.user)
        return f"The promotion of {pending.model_version} was withdrawn."

    return _done(request, withdraw)


@require_POST
@require_permissions(VIEW, PROMOTE)
def model_rollback(request: HttpRequest) -> HttpResponse:
    def rollback() -> str:
        activation = registry.model_rollback(
            user=request.user, reason=request.POST.get("reason", "")
        )
        return f"Rolled back: {activation.model_version} is active again."

    return _done(request, rollback)


@require_POST
@require_permissions(VIEW, PROMOTE)
def model_shadow(request: HttpRequest) -> HttpResponse:
    wanted = request.POST.get("model_version") or ""
    if wanted and not wanted.isdigit():
        raise Http404("No such model version.")
    record = get_object_or_404(ModelVersion, pk=int(wanted)) if wanted else None

    def shadow() -> str:
        activation: ModelActivation = registry.model_shadow_set(
            model_version=record,
            user=request.user,
            reason=request.POST.get("reason", ""),
        )
        if activation.model_version is None:
            return "Shadow stopped."
        return (
            f"{activation.model_version} runs in shadow on new scans; its results are "
            "kept for comparison only."
        )

    return _done(request, shadow)
