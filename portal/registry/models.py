"""Site calibrations as versioned records: what the model's output is shown through.

A SiteCalibration is written once and never changed. Which one is in use is the latest
CalibrationActivation of a model version (an append-only log): activating, and rolling
back, add a row, so "which calibration was active, since when, set by whom" is always
answerable. The maths (fitting, applying) is ml.site_calibration's; this layer holds
the records and sits below analyses (an Analysis names the calibration it was shown
with) and above clinical.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone

from portal.clinical.scanners import SCANNER_FIELD_LENGTH, Scanner


def user_field(*, optional: bool = False) -> models.ForeignKey:
    """Who did it: a user kept while anything names them (PROTECT), with no reverse
    accessor; `optional`, may be nobody."""
    return models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="+",
        **({"null": True, "blank": True} if optional else {}),
    )


class ScannerScoped(models.Model):
    """A row about one scanner model's scans (DICOM Manufacturer, Manufacturer's Model
    Name); both empty: about the whole site's."""

    scanner_manufacturer = models.CharField(max_length=SCANNER_FIELD_LENGTH, blank=True)
    scanner_model = models.CharField(max_length=SCANNER_FIELD_LENGTH, blank=True)

    class Meta:
        abstract = True

    @property
    def scanner(self) -> Scanner:
        return Scanner(self.scanner_manufacturer, self.scanner_model)


class SiteCalibration(ScannerScoped):
    model_version = models.CharField(max_length=64)
    # Numbered per model version: "calibration 3 of busnet-lite0-…".
    version = models.PositiveIntegerField()
    parameters = models.JSONField(
        help_text="ml.site_calibration.SiteCalibration.to_dict(): temperature, class "
        "offsets, threshold on p(malignant), target sensitivity, n."
    )
    evaluation = models.JSONField(
        default=dict,
        blank=True,
        help_text="Cross-validated before/after on the reads it was fitted on.",
    )
    target_sensitivity = models.FloatField()
    reads = models.PositiveIntegerField(help_text="Signed reads it was fitted on.")
    # Fitted on one scanner model's reads (ScannerScoped), or on the whole site's.
    ood_site_threshold = models.FloatField(
        null=True,
        blank=True,
        help_text="The site's own upper percentile of the out-of-distribution score on "
        "the signed scans it was fitted on: with this calibration active, a scan is "
        "unusual only above it as well as above the model's threshold (empty: too few "
        "signed scans with a score, the model's threshold alone).",
    )
    # The job that fitted it (a worker's fit, "calibration-fit-<id>"); empty: fitted in
    # the request. Unique: a job re-run after its worker was given up for lost cannot
    # record a second calibration.
    job = models.CharField(max_length=64, blank=True, default="")
    created_by = user_field()
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ("-created_at", "-id")
        constraints = (
            models.UniqueConstraint(
                fields=("model_version", "version"),
                name="site_calibration_version_per_model",
            ),
            models.UniqueConstraint(
                fields=("job",),
                condition=~models.Q(job=""),
                name="site_calibration_one_per_job",
            ),
        )
        permissions = (
            ("activate_sitecalibration", "Can activate or roll back a calibration"),
        )

    def __str__(self) -> str:
        scope = "" if self.scanner.is_site else f" for {self.scanner.name}"
        return f"Site calibration {self.version} of {self.model_version}{scope}"

    @property
    def threshold(self) -> float | None:
        value = (self.parameters or {}).get("threshold")
        return None if value is None else float(value)

    def to_summary(self) -> dict[str, Any]:
        return {
            "id": self.pk,
            "version": self.version,
            "model_version": self.model_version,
            "target_sensitivity": self.target_sensitivity,
            "reads": self.reads,
            "threshold": self.threshold,
            "scanner_manufacturer": self.scanner_manufacturer,
            "scanner_model": self.scanner_model,
            "ood_site_threshold": self.ood_site_threshold,
        }


class CalibrationActivation(ScannerScoped):
    """From `activated_at` on, analyses of `model_version` are shown through
    `calibration` (None: the model's own calibration, as trained).

    With a scanner named, only that scanner model's analyses, and None there means "the
    site's calibration" (the site-wide one in use, the fallback)."""

    model_version = models.CharField(max_length=64)
    calibration = models.ForeignKey(
        SiteCalibration,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="activations",
    )
    activated_by = user_field()
    activated_at = models.DateTimeField(default=timezone.now, editable=False)
    reason = models.CharField(max_length=255, blank=True)
    rescored = models.PositiveIntegerField(
        default=0, help_text="Analyses re-scored from their stored logits."
    )

    class Meta:
        ordering = ("-activated_at", "-id")
        indexes = (
            models.Index(
                fields=("model_version", "-activated_at", "-id"),
                name="calibration_activation_latest",
            ),
            models.Index(
                fields=(
                    "model_version",
                    "scanner_manufacturer",
                    "scanner_model",
                    "-activated_at",
                    "-id",
                ),
                name="calibration_activation_scanner",
            ),
        )

    def __str__(self) -> str:
        fallback = (
            "the model's own calibration" if self.scanner.is_site else "the site's"
        )
        target = self.calibration or fallback
        return f"{target} active since {self.activated_at:%Y-%m-%d %H:%M}"


# --- model versions ---------------------------------------------------------------------


class ModelVersion(models.Model):
    """A model installed for this site: the shipped one (ML_WEIGHTS_DIR) or one copied in
    by `manage.py install_model` (ML_MODELS_DIR/<version>/). Written once, never edited:
    its card, lineage and comparison report are what model.json and compare_report.json
    said when it was installed."""

    class Source(models.TextChoices):
        SHIPPED = "shipped"
        INSTALLED = "installed"

    version = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=64, blank=True)
    source = models.CharField(max_length=16, choices=Source.choices)
    weights_sha256 = models.CharField(max_length=64, blank=True)
    card = models.JSONField(
        default=dict, blank=True, help_text="model.json without its large arrays."
    )
    lineage = models.JSONField(
        default=dict,
        blank=True,
        help_text="What it was fine-tuned from and on: base version, site sources "
        "(their sha256 and counts), original sources.",
    )
    comparison = models.JSONField(
        null=True,
        blank=True,
        help_text="python -m ml compare's report against its baseline (rule, sets, "
        "measures with paired intervals and verdicts); empty: never compared.",
    )
    installed_by = user_field(optional=True)
    installed_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ("-installed_at", "-id")
        permissions = (
            (
                "promote_modelversion",
                "Can promote, roll back and shadow a model version",
            ),
        )

    def __str__(self) -> str:
        return self.version

    def worse_measures(self, *, baseline: str) -> list[str] | None:
        """The "set: measure" pairs its comparison against `baseline` judged worse; None
        when it has no comparison against that version (nothing says it is not worse)."""
        report = self.comparison or {}
        if (
            report.get("baseline") != baseline
            or report.get("candidate") != self.version
        ):
            return None
        return [
            f"{label}: {name}"
            for label, result in (report.get("sets") or {}).items()
            for name, measure in (result.get("measures") or {}).items()
            if measure.get("verdict") == "worse"
        ]


class ModelActivation(models.Model):
    """An append-only log: from `activated_at` on, new analyses are made by
    `model_version` (role active) or it runs beside the active one on new scans, its
    results kept for comparison only (role shadow; model_version empty: shadow off)."""

    class Role(models.TextChoices):
        ACTIVE = "active"
        SHADOW = "shadow"

    class Action(models.TextChoices):
        PROMOTE = "promote"
        ROLLBACK = "rollback"
        SHADOW = "shadow"

    role = models.CharField(max_length=8, choices=Role.choices)
    action = models.CharField(max_length=10, choices=Action.choices)
    model_version = models.ForeignKey(
        ModelVersion,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="activations",
    )
    reason = models.CharField(max_length=255)
    activated_by = user_field()
    activated_at = models.DateTimeField(default=timezone.now, editable=False)
    # A promotion its comparison does not support ("worse" on a measure, or no
    # comparison against the version active then) needs a second administrator.
    overrode = models.JSONField(
        default=list,
        blank=True,
        help_text="The measures judged worse (or why the comparison did not apply) "
        "that a second administrator confirmed past.",
    )
    confirmed_by = user_field(optional=True)

    class Meta:
        ordering = ("-activated_at", "-id")
        indexes = (
            models.Index(
                fields=("role", "-activated_at", "-id"), name="model_activation_latest"
            ),
        )

    def __str__(self) -> str:
        target = self.model_version or "none"
        return f"{self.role}: {target} since {self.activated_at:%Y-%m-%d %H:%M}"


class PromotionRequest(models.Model):
    """A promotion the comparison does not support, waiting for a second, different
    administrator to confirm (or anyone allowed to withdraw it)."""

    class Status(models.TextChoices):
        PENDING = "pending"
        CONFIRMED = "confirmed"
        WITHDRAWN = "withdrawn"

    model_version = models.ForeignKey(
        ModelVersion, on_delete=models.PROTECT, related_name="promotion_requests"
    )
    # The version active when it was asked: confirming after another promotion is void.
    baseline = models.CharField(max_length=64)
    reason = models.CharField(max_length=255)
    concerns = models.JSONField(default=list, blank=True)
    requested_by = user_field()
    requested_at = models.DateTimeField(default=timezone.now, editable=False)
    status = models.CharField(
        max_length=10, choices=Status.choices, default=Status.PENDING
    )
    decided_by = user_field(optional=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    activation = models.OneToOneField(
        ModelActivation,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="request",
    )

    class Meta:
        ordering = ("-requested_at", "-id")

    def __str__(self) -> str:
        return f"Promotion of {self.model_version} ({self.status})"
