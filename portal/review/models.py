from __future__ import annotations

import uuid
from pathlib import PurePosixPath

from django.conf import settings
from django.db import models
from django.utils import timezone

from portal.analyses.models import Analysis
from portal.clinical.models import Scan
from portal.registry.models import ScannerScoped

LABEL_CHOICES = Analysis.Label.choices


class BiRads(models.TextChoices):
    """ACR BI-RADS assessment categories for breast ultrasound."""

    CAT_0 = "0", "0 – incomplete, needs additional imaging"
    CAT_1 = "1", "1 – negative"
    CAT_2 = "2", "2 – benign"
    CAT_3 = "3", "3 – probably benign"
    # BI-RADS allows 4 alone when the reader does not subdivide it.
    CAT_4 = "4", "4 – suspicious of malignancy"
    CAT_4A = "4A", "4A – low suspicion of malignancy"
    CAT_4B = "4B", "4B – moderate suspicion of malignancy"
    CAT_4C = "4C", "4C – high suspicion of malignancy"
    CAT_5 = "5", "5 – highly suggestive of malignancy"
    CAT_6 = "6", "6 – known biopsy-proven malignancy"


class OutlineState(models.TextChoices):
    """What a review says of the lesion outline."""

    # The reader did not correct it: the model's outline stands, as the model's.
    MODEL = "model", "the model's outline, not corrected"
    # The reader drew (or confirmed) it: Review.outline holds the mask.
    CORRECTED = "corrected", "corrected by the reader"
    # The reader says there is no lesion to outline.
    NO_LESION = "no_lesion", "no lesion"


def review_outline_path(review: Review, filename: str) -> str:
    # A random name: never patient data. Files are never rewritten, so an amendment
    # that keeps the outline points at the same file.
    return str(
        PurePosixPath("reviews", str(review.scan_id), f"{uuid.uuid4()}-outline.png")
    )


class Review(models.Model):
    """A radiologist's reading of one analysed scan.

    A draft can be edited by its author; once signed it is never changed again. An
    amendment is a new row (version + 1) that points at the signed review it replaces,
    so every signed reading stays on record.
    """

    scan = models.ForeignKey(Scan, on_delete=models.PROTECT, related_name="reviews")
    analysis = models.ForeignKey(
        Analysis, on_delete=models.PROTECT, related_name="reviews"
    )
    version = models.PositiveIntegerField(default=1)
    amends = models.OneToOneField(
        "self",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="amended_by",
    )
    agrees_with_model = models.BooleanField()
    label = models.CharField(max_length=16, choices=LABEL_CHOICES)
    birads = models.CharField("BI-RADS", max_length=2, choices=BiRads.choices)
    note = models.TextField(blank=True)
    outline_state = models.CharField(
        max_length=16, choices=OutlineState.choices, default=OutlineState.MODEL
    )
    # The reader's lesion mask at the scan's size (1-bit PNG), when outline_state is
    # "corrected".
    outline = models.FileField(
        upload_to=review_outline_path, blank=True, max_length=255
    )
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)
    signed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("scan", "-version")
        constraints = (
            models.UniqueConstraint(
                fields=("scan", "version"), name="review_one_per_scan_version"
            ),
        )
        indexes = (
            models.Index(fields=("signed_at",), name="review_signed_at"),
            # "Has this scan a signed review?", asked of every row the dashboard counts
            # or filters as reviewed or not: answered from this index alone.
            models.Index(
                fields=("scan",),
                condition=models.Q(signed_at__isnull=False),
                name="review_signed_scan",
            ),
        )
        permissions = (
            ("sign_review", "Can sign off and amend reviews"),
            ("view_worklist", "Can see the worklist of unreviewed studies"),
            ("view_agreement", "Can see the model/radiologist agreement monitor"),
        )

    def __str__(self) -> str:
        return f"Review {self.pk} of scan {self.scan_id} v{self.version}"

    @property
    def is_signed(self) -> bool:
        return self.signed_at is not None

    @property
    def status(self) -> str:
        if not self.is_signed:
            return "draft"
        if hasattr(self, "amended_by") and self.amended_by.is_signed:
            return "superseded"
        return "signed"


class AgreementCount(models.Model):
    """How many current signed readings fall in one cell of the agreement monitor: a
    model version, the month of signing, the model's label and the radiologist's.

    The monitor sums these few rows instead of grouping every signed review (seconds
    at 10,000 studies on SQLite). portal.review.services keeps them in the transaction
    that signs a reading: +1 in its cell, -1 in the cell of the signed reading it
    amends. agreement_counts_rebuild recomputes them from the reviews.
    """

    model_version = models.CharField(max_length=64)
    # The first day of the month of signing, in the portal's time zone.
    month = models.DateField()
    model_label = models.CharField(max_length=16)
    reader_label = models.CharField(max_length=16)
    # Signed, not positive: a count that went wrong never stops a radiologist signing.
    readings = models.IntegerField(default=0)

    class Meta:
        constraints = (
            models.UniqueConstraint(
                fields=("model_version", "month", "model_label", "reader_label"),
                name="agreement_count_one_per_cell",
            ),
        )

    def __str__(self) -> str:
        return (
            f"{self.model_version} {self.month:%Y-%m} "
            f"{self.model_label}/{self.reader_label}: {self.readings}"
        )


class CalibrationFit(ScannerScoped):
    """A requested site calibration fit: the job row a worker claims and runs.

    The fit reads every signed read of the model (thousands at a busy site) and
    bootstraps its intervals, so it runs in a worker (workers.tasks.fit_site_calibration),
    never inside a web request; the page polls this row. Like an Analysis, the row is
    the job and the message only names it: status changes are compare-and-set updates
    (portal.review.calibration), and a failed fit can be run again.
    """

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    model_version = models.CharField(max_length=64)
    # Fitted on one scanner model's reads (ScannerScoped), or on the whole site's.
    target_sensitivity = models.FloatField()
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.QUEUED
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    # Who holds a running fit: a token each claim writes anew. A worker records its
    # outcome only while the token is still its own (a fit claimed again after its
    # worker was given up for lost is the new claimant's).
    claim = models.CharField(max_length=32, blank=True, default="", editable=False)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    requested_at = models.DateTimeField(default=timezone.now, editable=False)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    calibration = models.ForeignKey(
        "registry.SiteCalibration",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="The calibration the fit recorded.",
    )

    class Meta:
        ordering = ("-requested_at", "-id")
        indexes = (
            models.Index(
                fields=("model_version", "-requested_at"), name="calibration_fit_recent"
            ),
        )

    def __str__(self) -> str:
        return f"Calibration fit {self.pk} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in (self.Status.SUCCEEDED, self.Status.FAILED)

    def to_status_dict(self) -> dict[str, object]:
        return {
            "id": self.pk,
            "status": self.status,
            "finished": self.is_finished,
            "attempts": self.attempts,
            "error": self.error,
            "calibration": self.calibration_id,
        }
