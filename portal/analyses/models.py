from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from django.db import models
from django.utils import timezone

from portal.clinical.models import Scan
from portal.registry.models import SiteCalibration

# What a worker stores: the model's output itself (a 1-bit mask, 8-bit grey heatmaps).
STORED_KINDS = ("mask", "gradcam_map", "seg_gradcam_map")
# Pictures drawn from it on demand (report, API, admin) and cached in storage; older
# analyses had them written by the worker. Pages draw their own in the browser.
COMPOSITE_KINDS = ("overlay", "gradcam", "seg_gradcam")
ARTIFACT_KINDS = (
    "mask",
    "overlay",
    "gradcam",
    "seg_gradcam",
    "gradcam_map",
    "seg_gradcam_map",
)
# The columns a model's result fills: what a worker writes and the API shows of it.
RESULT_FIELDS = (
    "label",
    "probabilities",
    "confidence",
    "lesion_area_fraction",
    "bbox",
    "in_distribution",
    "ood_score",
    "ood_threshold",
    "ood_rule",
    "ood_site_threshold",
    "explained_class",
    "withheld",
    "gate_score",
    "looked_again",
    "calibration",
    "suspicious",
    "operating_threshold",
)
# What a result shows of the model's verdict: nothing of it leaves a withheld analysis.
VERDICT_FIELDS = (
    "label",
    "probabilities",
    "confidence",
    "lesion_area_fraction",
    "bbox",
    "explained_class",
    "suspicious",
)
WITHHELD_MESSAGE = "not analysed: not a breast ultrasound image"


def artifact_path(analysis: Analysis, filename: str) -> str:
    # The file name passed in is the artifact kind ("overlay.png"), set by the service.
    return str(
        PurePosixPath("analyses", str(analysis.pk), PurePosixPath(filename).name)
    )


class Analysis(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    class Label(models.TextChoices):
        NORMAL = "normal"
        BENIGN = "benign"
        MALIGNANT = "malignant"

    scan = models.ForeignKey(Scan, on_delete=models.PROTECT, related_name="analyses")
    model_version = models.CharField(max_length=64)
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.QUEUED
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    queued_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=255, blank=True)
    # Refreshed by the running worker process every few seconds (workers/liveness.py):
    # an old one means that process is gone.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    label = models.CharField(max_length=16, choices=Label.choices, blank=True)
    confidence = models.FloatField(null=True, blank=True)
    probabilities = models.JSONField(null=True, blank=True)
    lesion_area_fraction = models.FloatField(null=True, blank=True)
    bbox = models.JSONField(null=True, blank=True)
    # None: the model that produced this result carries no out-of-distribution statistics.
    in_distribution = models.BooleanField(
        null=True,
        blank=True,
        help_text="False when the scan is outside what the model was trained on (the "
        "result is not reliable); null when the model cannot tell.",
    )
    ood_score = models.FloatField(
        null=True,
        blank=True,
        help_text="Out-of-distribution score (higher: further from the training images).",
    )
    # Kept with the score: a later model's threshold says nothing about this score.
    ood_threshold = models.FloatField(
        null=True,
        blank=True,
        help_text="Scores above this threshold of the model version are out of distribution.",
    )

    class OodRule(models.TextChoices):
        MODEL = "model", "the model's threshold"
        SITE = "site", "the model's threshold and the site's own scans"

    ood_rule = models.CharField(
        max_length=8,
        choices=OodRule.choices,
        blank=True,
        help_text="Which rule judged 'unusual for this model' (empty: not judged).",
    )
    ood_site_threshold = models.FloatField(
        null=True,
        blank=True,
        help_text="The site's own threshold on the score (its calibration's upper "
        "percentile of its signed scans) when the site's rule judged the scan.",
    )
    explained_class = models.CharField(
        max_length=16,
        choices=Label.choices,
        blank=True,
        help_text="The class the classification Grad-CAM explains (empty: not recorded).",
    )
    # The gate: a scan that is not a breast B-mode ultrasound at all (a photo, a
    # document, a Doppler frame) gets no label, probabilities or outline anywhere.
    withheld = models.BooleanField(
        default=False,
        help_text="True when the scan is not a breast ultrasound image: the result is "
        "not shown, only this verdict and its score.",
    )
    gate_score = models.FloatField(
        null=True,
        blank=True,
        help_text="The gate's score (higher: less like a breast ultrasound image).",
    )
    # The second look (ml.inference.Analyzer): the model ran again on a zoomed crop around
    # the lesion it found; the label is both looks', the outline the whole scan's.
    looked_again = models.BooleanField(
        default=False,
        help_text="True when the model also looked at a zoomed crop around the lesion it "
        "found (label from both looks; outline from the whole scan).",
    )
    # The raw network output, before any calibration: a new site calibration re-scores
    # the analysis from these without running the network again.
    logits = models.JSONField(null=True, blank=True)
    calibration = models.ForeignKey(
        SiteCalibration,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="analyses",
        help_text="The site calibration the result is shown with (empty: the model's "
        "own calibration).",
    )
    suspicious = models.BooleanField(
        null=True,
        blank=True,
        help_text="p(malignant) at or above the site's operating threshold.",
    )
    operating_threshold = models.FloatField(
        null=True,
        blank=True,
        help_text="The threshold on p(malignant) the suspicious flag was set with.",
    )

    mask = models.FileField(upload_to=artifact_path, blank=True, max_length=255)
    overlay = models.FileField(upload_to=artifact_path, blank=True, max_length=255)
    gradcam = models.FileField(upload_to=artifact_path, blank=True, max_length=255)
    seg_gradcam = models.FileField(upload_to=artifact_path, blank=True, max_length=255)
    gradcam_map = models.FileField(upload_to=artifact_path, blank=True, max_length=255)
    seg_gradcam_map = models.FileField(
        upload_to=artifact_path, blank=True, max_length=255
    )

    class Meta:
        ordering = (
            "-queued_at",
            "-id",
        )
        verbose_name_plural = "analyses"
        constraints = (
            models.UniqueConstraint(
                fields=("scan", "model_version"), name="analysis_one_per_scan_and_model"
            ),
        )
        indexes = (
            models.Index(fields=("status", "queued_at"), name="analysis_status_queued"),
            # The queue's "failed in the last day": only the recent failures, not every
            # failure ever (review.selectors.queue_state, on every dashboard page).
            models.Index(
                fields=("status", "finished_at"), name="analysis_status_finished"
            ),
            # The dashboard's counts per status and label, and its label filter, read
            # from these indexes alone: scan_id answers "is the scan reviewed?" (the
            # review_signed_scan index) and finds the scan's upload time.
            models.Index(
                fields=("label", "status", "scan"), name="analysis_label_status_scan"
            ),
            models.Index(
                fields=("status", "label", "scan"), name="analysis_status_label_scan"
            ),
            # "Has this scan a finished result?" (the worklist columns, the study
            # page): without it SQLite's planner answers from the covering index above
            # and reads every succeeded analysis for each scan. With the label and the
            # withheld flag, the dashboard's counts of a set of studies (a month, a
            # patient) read each scan's results from the index alone, not the table.
            models.Index(
                fields=("scan", "status", "label", "withheld"),
                name="analysis_scan_status_label",
            ),
            models.Index(fields=("confidence",), name="analysis_confidence"),
            models.Index(fields=("model_version",), name="analysis_model_version"),
            models.Index(fields=("withheld", "status"), name="analysis_withheld"),
            # The dashboard's "unusual for this model" filter and its counts, from
            # the few results it keeps (a partial index): without it each count read
            # the table (0.8 s at a million analyses).
            models.Index(
                fields=("status", "label", "scan"),
                condition=models.Q(in_distribution=False, withheld=False),
                name="analysis_outside",
            ),
        )

    def __str__(self) -> str:
        return f"Analysis {self.pk} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in (self.Status.SUCCEEDED, self.Status.FAILED)

    @property
    def can_retry(self) -> bool:
        return self.status == self.Status.FAILED

    @property
    def outside_training_distribution(self) -> bool:
        """True only when the model checked and found the scan unlike its training images.

        A caution ("unusual for this model"), not a verdict; a withheld scan has none."""
        return self.in_distribution is False and not self.withheld

    @property
    def shows_result(self) -> bool:
        """A finished result a reader may see: succeeded and not withheld by the gate."""
        return self.status == self.Status.SUCCEEDED and not self.withheld

    @property
    def malignant_probability(self) -> float | None:
        return (self.probabilities or {}).get("malignant")

    def artifact_names(self) -> dict[str, str]:
        return {
            kind: getattr(self, kind).name
            for kind in ARTIFACT_KINDS
            if getattr(self, kind)
        }

    def to_status_dict(self) -> dict[str, Any]:
        """What the study page's poller needs; artifact URLs are added by the view."""
        status = {
            "id": self.pk,
            "scan_id": self.scan_id,
            "status": self.status,
            "model_version": self.model_version,
            "attempts": self.attempts,
            "error": self.error,
            "label": self.label,
            "confidence": self.confidence,
            "probabilities": self.probabilities,
            "lesion_area_fraction": self.lesion_area_fraction,
            "bbox": self.bbox,
            "in_distribution": self.in_distribution,
            "ood_score": self.ood_score,
            "ood_threshold": self.ood_threshold,
            "ood_rule": self.ood_rule,
            "ood_site_threshold": self.ood_site_threshold,
            "explained_class": self.explained_class,
            "withheld": self.withheld,
            "gate_score": self.gate_score,
            "looked_again": self.looked_again,
            "suspicious": self.suspicious,
            "calibration": self.calibration_id,
            "finished": self.is_finished,
        }
        if self.withheld:
            status.update(dict.fromkeys(VERDICT_FIELDS))
            status["withheld_message"] = WITHHELD_MESSAGE
        return status


class ShadowResult(models.Model):
    """What a shadow model version (registry: role shadow) gave on the scan of a new
    analysis, run beside the active version. Kept for comparison only: it is never the
    result, and no page, export, API, report or DICOM object reads it as one; only the
    model registry's agreement summary does."""

    analysis = models.ForeignKey(
        Analysis, on_delete=models.CASCADE, related_name="shadow_results"
    )
    model_version = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    error = models.TextField(blank=True)
    label = models.CharField(max_length=16, choices=Analysis.Label.choices, blank=True)
    probabilities = models.JSONField(null=True, blank=True)
    logits = models.JSONField(null=True, blank=True)
    lesion_area_fraction = models.FloatField(null=True, blank=True)
    withheld = models.BooleanField(default=False)
    in_distribution = models.BooleanField(null=True, blank=True)
    mask_dice = models.FloatField(
        null=True,
        blank=True,
        help_text="Dice of its lesion mask with the active version's on the same scan.",
    )

    class Meta:
        ordering = ("-created_at", "-id")
        constraints = (
            models.UniqueConstraint(
                fields=("analysis", "model_version"),
                name="shadow_result_one_per_analysis_and_model",
            ),
        )
        indexes = (
            models.Index(
                fields=("model_version", "created_at"), name="shadow_result_version"
            ),
        )

    def __str__(self) -> str:
        return f"Shadow result of {self.model_version} on analysis {self.analysis_id}"
