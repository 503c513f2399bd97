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


class SiteCalibration(models.Model):
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
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ("-created_at", "-id")
        constraints = (
            models.UniqueConstraint(
                fields=("model_version", "version"),
                name="site_calibration_version_per_model",
            ),
        )
        permissions = (
            ("activate_sitecalibration", "Can activate or roll back a calibration"),
        )

    def __str__(self) -> str:
        return f"Site calibration {self.version} of {self.model_version}"

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
        }


class CalibrationActivation(models.Model):
    """From `activated_at` on, analyses of `model_version` are shown through
    `calibration` (None: the model's own calibration, as trained)."""

    model_version = models.CharField(max_length=64)
    calibration = models.ForeignKey(
        SiteCalibration,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="activations",
    )
    activated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
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
        )

    def __str__(self) -> str:
        target = self.calibration or "the model's own calibration"
        return f"{target} active since {self.activated_at:%Y-%m-%d %H:%M}"
