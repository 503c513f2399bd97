"""Writes to the registry. A calibration or a model version is inserted once and never
changed; which one is in use changes only by adding an activation row (rollback is an
activation too). Promoting, rolling back and shadowing a model version are for holders of
registry.promote_modelversion (administrators), checked here as well as in the views.

Re-scoring the analyses a new calibration applies to belongs to the layers above
(analyses keeps the results, review composes the two): nothing here calls up.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from portal.clinical.scanners import SITE, Scanner
from portal.registry import installed
from portal.registry.models import (
    CalibrationActivation,
    ModelActivation,
    ModelVersion,
    PromotionRequest,
    SiteCalibration,
)
from portal.registry.selectors import (
    calibration_activation_latest,
    calibration_activations,
    model_activations,
    model_version_active,
    model_version_shadow,
)

logger = logging.getLogger(__name__)


@transaction.atomic
def site_calibration_create(
    *,
    model_version: str,
    parameters: dict[str, Any],
    evaluation: dict[str, Any],
    target_sensitivity: float,
    reads: int,
    created_by: AbstractBaseUser,
    scanner: Scanner = SITE,
    ood_site_threshold: float | None = None,
    job: str = "",
) -> SiteCalibration:
    """Record a fitted calibration as the next version for its model (not active yet);
    versions are numbered per model version, whichever scanner model they are for.

    `job` names the job that fitted it: a second calibration of one job is refused by
    the database (IntegrityError), whatever raced to record it."""
    if not 0.0 < target_sensitivity < 1.0:
        raise ValidationError("The target sensitivity must lie between 0 and 1.")
    # Locks the model version's rows so that two fits cannot take the same number.
    latest = (
        SiteCalibration.objects.select_for_update()
        .filter(model_version=model_version)
        .aggregate(latest=Max("version"))["latest"]
    )
    calibration = SiteCalibration.objects.create(
        model_version=model_version,
        version=(latest or 0) + 1,
        parameters=parameters,
        evaluation=evaluation,
        target_sensitivity=target_sensitivity,
        reads=reads,
        created_by=created_by,
        scanner_manufacturer=scanner.manufacturer,
        scanner_model=scanner.model,
        ood_site_threshold=ood_site_threshold,
        job=job,
    )
    logger.info(
        "site calibration %s (version %s) recorded", calibration.pk, calibration.version
    )
    return calibration


@transaction.atomic
def calibration_activate(
    *,
    model_version: str,
    calibration: SiteCalibration | None,
    activated_by: AbstractBaseUser,
    reason: str = "",
    scanner: Scanner = SITE,
) -> CalibrationActivation:
    """Make `calibration` the one analyses of `model_version` from `scanner` (the whole
    site by default) are shown with from now on. None: the model's own (site-wide), the
    site's (a scanner model)."""
    if calibration is not None and calibration.model_version != model_version:
        raise ValidationError(
            "This calibration was fitted on another model version's output."
        )
    if calibration is not None and calibration.scanner != scanner:
        raise ValidationError(
            f"This calibration was fitted for {calibration.scanner.name}, not for "
            f"{scanner.name}."
        )
    # Serialises activations of one model version: the latest row is what is active.
    list(
        CalibrationActivation.objects.select_for_update()
        .filter(model_version=model_version)
        .values_list("pk", flat=True)
    )
    latest = calibration_activation_latest(model_version=model_version, scanner=scanner)
    current = latest.calibration_id if latest is not None else None
    if current == (calibration.pk if calibration else None):
        raise ValidationError("This calibration is already the active one.")
    return CalibrationActivation.objects.create(
        model_version=model_version,
        scanner_manufacturer=scanner.manufacturer,
        scanner_model=scanner.model,
        calibration=calibration,
        activated_by=activated_by,
        reason=reason[:255],
    )


def calibration_rollback_target(
    *, model_version: str, scanner: Scanner = SITE
) -> SiteCalibration | None:
    """What a rollback returns to: the calibration active before the current one (for
    `scanner`'s scope).

    Raises ValidationError when nothing was active before (nothing to roll back)."""
    activations = list(
        calibration_activations(model_version=model_version, scanner=scanner)[:2]
    )
    if not activations:
        raise ValidationError(
            "No calibration has been activated: nothing to roll back."
        )
    if len(activations) == 1:
        return None
    return activations[1].calibration


# --- model versions ---------------------------------------------------------------------

PROMOTE_PERMISSION = "registry.promote_modelversion"


class PromotionNeedsConfirmation(ValidationError):
    """The comparison does not support the promotion: a second administrator must confirm
    a promotion request. `concerns` says why."""

    def __init__(self, concerns: list[str]) -> None:
        self.concerns = concerns
        super().__init__(
            "Refused: " + "; ".join(concerns) + ". A second administrator must "
            "confirm a promotion request to override."
        )


def _require_promoter(user: AbstractBaseUser) -> None:
    if not user.is_authenticated or not user.has_perm(PROMOTE_PERMISSION):
        raise PermissionDenied("Only administrators install or promote model versions.")


def _reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError("Give a reason: it is kept in the activation log.")
    return reason[:255]


def _lock_registry() -> None:
    """Serialise changes of what is active: every version row is locked (a handful)."""
    list(ModelVersion.objects.select_for_update().values_list("pk", flat=True))


@transaction.atomic
def model_version_register_shipped() -> ModelVersion | None:
    """The shipped model's record (None when none is shipped): made at deploy time by
    `manage.py register_shipped_model`, else by the first change that needs it; never
    by a page that only shows the registry."""
    version = installed.shipped_version()
    if version is None:
        return None
    existing = ModelVersion.objects.filter(version=version).first()
    if existing is not None:
        return existing
    try:
        described = installed.describe(Path(installed.version_dir(version) or ""))
    except installed.InstallError:
        logger.warning(
            "the shipped model's model.json cannot be recorded", exc_info=True
        )
        return None
    record, _ = ModelVersion.objects.get_or_create(
        version=version,
        defaults={
            **described.record_fields(),
            "source": ModelVersion.Source.SHIPPED,
        },
    )
    return record


def model_version_install(
    *, source: Path, installed_by: AbstractBaseUser | None
) -> ModelVersion:
    """Copy a fine-tuned model folder (with its comparison report) into ML_MODELS_DIR and
    record it. Installed is not active: promoting it is a separate, audited step.

    The folder is staged, checked and renamed into place, then recorded; when recording
    fails the folder is removed, and one left by a crash between the two is adopted by
    the next install of the same version: an install can always be run again."""
    model_version_register_shipped()
    try:
        described = installed.describe(Path(source))
    except installed.InstallError as exc:
        raise ValidationError(str(exc)) from None
    if ModelVersion.objects.filter(version=described.version).exists():
        raise ValidationError(f"{described.version} is installed already.")
    try:
        copied = installed.copy_in(Path(source))
    except installed.InstallError as exc:
        raise ValidationError(str(exc)) from None
    try:
        with transaction.atomic():
            record = ModelVersion.objects.create(
                version=copied.described.version,
                **copied.described.record_fields(),
                source=ModelVersion.Source.INSTALLED,
                installed_by=installed_by,
            )
    except IntegrityError:
        # Another install of the same version recorded it first: its folder stays.
        raise ValidationError(f"{described.version} is installed already.") from None
    except BaseException:
        installed.remove(copied)
        raise
    logger.info(
        "model version %s installed%s",
        record.version,
        "" if copied.copied else " (its folder, left by an interrupted install, kept)",
    )
    return record


def model_version_upload(
    *, archive: IO[bytes], installed_by: AbstractBaseUser
) -> tuple[ModelVersion, list[str]]:
    """Install a model folder an administrator sent through the web, zipped: unpacked
    into a private temporary folder (only a version folder's own files, at most
    MODEL_UPLOAD_MAX_BYTES), then installed exactly as `manage.py install_model` does.
    Returns the record and the archive's members left out."""
    _require_promoter(installed_by)
    limit = settings.MODEL_UPLOAD_MAX_BYTES
    if (getattr(archive, "size", None) or 0) > limit:
        raise ValidationError(f"The archive is larger than {limit} bytes.")
    with tempfile.TemporaryDirectory(prefix="model-upload-") as folder:
        try:
            left_out = installed.unpack(archive, Path(folder), max_bytes=limit)
        except installed.InstallError as exc:
            raise ValidationError(str(exc)) from None
        record = model_version_install(source=Path(folder), installed_by=installed_by)
    return record, left_out


def promotion_concerns(model_version: ModelVersion, *, active: str | None) -> list[str]:
    """Why the stored comparison does not support making `model_version` active (empty:
    it supports it): a measure judged worse, or no comparison with the active version."""
    report = model_version.comparison
    if report is None:
        return [f"{model_version.version} has no comparison report"]
    worse = model_version.worse_measures(baseline=active or "")
    if worse is None:
        baseline = report.get("baseline") or "another model"
        return [f"its comparison is against {baseline}, not the active {active}"]
    return [f"worse on {measure}" for measure in worse]


def _servable(model_version: ModelVersion) -> None:
    if installed.version_dir(model_version.version) is None:
        raise ValidationError(
            f"The weights of {model_version.version} are not in ML_MODELS_DIR (or "
            "ML_WEIGHTS_DIR): workers could not load it."
        )


def _activate(
    *,
    model_version: ModelVersion,
    user: AbstractBaseUser,
    reason: str,
    action: str,
    confirmed_by: AbstractBaseUser | None = None,
    overrode: list[str] | None = None,
) -> ModelActivation:
    activation = ModelActivation.objects.create(
        role=ModelActivation.Role.ACTIVE,
        action=action,
        model_version=model_version,
        reason=reason,
        activated_by=user,
        confirmed_by=confirmed_by,
        overrode=overrode or [],
    )
    if model_version_shadow() == model_version.version:
        # The shadow is now the active model: nothing left to compare it with.
        ModelActivation.objects.create(
            role=ModelActivation.Role.SHADOW,
            action=ModelActivation.Action.SHADOW,
            model_version=None,
            reason=f"shadow off: {model_version.version} became active",
            activated_by=user,
        )
    logger.info("model version %s active (%s)", model_version.version, action)
    return activation


def _change(user: AbstractBaseUser, reason: str) -> str:
    """The start of every change of what is active: who may, why (the reason, as kept),
    the shipped model recorded (what a rollback may return to), the registry locked."""
    _require_promoter(user)
    reason = _reason(reason)
    model_version_register_shipped()
    _lock_registry()
    return reason


def _promotable(model_version: ModelVersion) -> str | None:
    """The active version, after refusing a promotion to what is active already."""
    _lock_registry()
    active = model_version_active()
    if active == model_version.version:
        raise ValidationError(f"{model_version.version} is the active version already.")
    _servable(model_version)
    return active


@transaction.atomic
def model_promote(
    *, model_version: ModelVersion, user: AbstractBaseUser, reason: str
) -> ModelActivation:
    """Make `model_version` the one new analyses are made by, from now on.

    Refused (PromotionNeedsConfirmation) when its comparison with the active version says
    "worse" on any measure, or there is none: then a second administrator must confirm a
    promotion request (model_promotion_request, model_promotion_confirm)."""
    reason = _change(user, reason)
    active = _promotable(model_version)
    concerns = promotion_concerns(model_version, active=active)
    if concerns:
        raise PromotionNeedsConfirmation(concerns)
    return _activate(
        model_version=model_version,
        user=user,
        reason=reason,
        action=ModelActivation.Action.PROMOTE,
    )


@transaction.atomic
def model_promotion_request(
    *, model_version: ModelVersion, user: AbstractBaseUser, reason: str
) -> PromotionRequest:
    """Ask for a promotion the comparison does not support; another administrator
    confirms it or anyone allowed withdraws it."""
    reason = _change(user, reason)
    active = _promotable(model_version)
    concerns = promotion_concerns(model_version, active=active)
    if not concerns:
        raise ValidationError(
            "Its comparison supports the promotion: promote it, no second "
            "administrator is needed."
        )
    if PromotionRequest.objects.filter(
        model_version=model_version, status=PromotionRequest.Status.PENDING
    ).exists():
        raise ValidationError("A promotion of this version is waiting already.")
    return PromotionRequest.objects.create(
        model_version=model_version,
        baseline=active or "",
        reason=reason,
        concerns=concerns,
        requested_by=user,
    )


def _decide(request: PromotionRequest, *, user: AbstractBaseUser, status: str) -> None:
    """Close a pending request (its row locked: two clicks cannot both close it), with
    save() so that django-auditlog records the decision."""
    pending = (
        PromotionRequest.objects.select_for_update()
        .filter(pk=request.pk, status=PromotionRequest.Status.PENDING)
        .first()
    )
    if pending is None:
        raise ValidationError("This request is no longer waiting.")
    pending.status = status
    pending.decided_by = user
    pending.decided_at = timezone.now()
    pending.save(update_fields=["status", "decided_by", "decided_at"])
    request.refresh_from_db()


@transaction.atomic
def model_promotion_confirm(
    *, request: PromotionRequest, user: AbstractBaseUser
) -> ModelActivation:
    """A second, different administrator overrides the comparison's concerns."""
    _require_promoter(user)
    if request.requested_by_id == user.pk:
        raise PermissionDenied(
            "A second administrator must confirm: not the one who asked."
        )
    model_version = request.model_version
    active = _promotable(model_version)
    if (active or "") != request.baseline:
        raise ValidationError(
            f"The active version changed since the request ({request.baseline} then, "
            f"{active} now): withdraw it and ask again."
        )
    _decide(request, user=user, status=PromotionRequest.Status.CONFIRMED)
    activation = _activate(
        model_version=model_version,
        user=request.requested_by,
        reason=request.reason,
        action=ModelActivation.Action.PROMOTE,
        confirmed_by=user,
        overrode=promotion_concerns(model_version, active=active),
    )
    request.activation = activation
    request.save(update_fields=["activation"])
    return activation


@transaction.atomic
def model_promotion_withdraw(
    *, request: PromotionRequest, user: AbstractBaseUser
) -> PromotionRequest:
    _require_promoter(user)
    _decide(request, user=user, status=PromotionRequest.Status.WITHDRAWN)
    return request


def model_rollback_target() -> ModelVersion:
    """The version active before the current one (the shipped model before the first
    promotion). ValidationError when nothing was ever promoted."""
    activations = list(model_activations(role=ModelActivation.Role.ACTIVE)[:2])
    if not activations:
        raise ValidationError("No model version was promoted: nothing to roll back.")
    if len(activations) == 2 and activations[1].model_version is not None:
        return activations[1].model_version
    shipped = model_version_register_shipped()
    if shipped is None:
        raise ValidationError("No shipped model to roll back to.")
    return shipped


@transaction.atomic
def model_rollback(*, user: AbstractBaseUser, reason: str) -> ModelActivation:
    """Return to the version active before the current one. It served before: no
    comparison is asked for."""
    reason = _change(user, reason)
    target = model_rollback_target()
    if target.version == model_version_active():
        raise ValidationError(f"{target.version} is the active version already.")
    _servable(target)
    return _activate(
        model_version=target,
        user=user,
        reason=reason,
        action=ModelActivation.Action.ROLLBACK,
    )


@transaction.atomic
def model_shadow_set(
    *, model_version: ModelVersion | None, user: AbstractBaseUser, reason: str
) -> ModelActivation:
    """Run `model_version` beside the active one on new scans, its results stored for
    comparison only (None: stop)."""
    reason = _change(user, reason)
    current = model_version_shadow()
    wanted = model_version.version if model_version is not None else None
    if current == wanted:
        raise ValidationError(
            "That is the shadow already." if wanted else "No shadow is running."
        )
    if model_version is not None:
        if model_version.version == model_version_active():
            raise ValidationError("The active version cannot be its own shadow.")
        _servable(model_version)
    return ModelActivation.objects.create(
        role=ModelActivation.Role.SHADOW,
        action=ModelActivation.Action.SHADOW,
        model_version=model_version,
        reason=reason,
        activated_by=user,
    )
