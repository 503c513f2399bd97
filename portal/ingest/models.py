from __future__ import annotations

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone

from portal.analyses.models import Analysis
from portal.clinical.models import Scan, Study


class UploadBatch(models.Model):
    """One upload (browser, API, import command or DICOM association) and the report of what became of it."""

    class Source(models.TextChoices):
        WEB = "web"
        API = "api"
        IMPORT = "import"
        DICOM = "dicom", "DICOM network"

    # The study uploaded to; empty for an import that places files by their tags/folders.
    study = models.ForeignKey(
        Study,
        on_delete=models.PROTECT,
        related_name="upload_batches",
        null=True,
        blank=True,
    )
    source = models.CharField(max_length=16, choices=Source.choices)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    # For instances received over DICOM: the sender's AE title (not patient data).
    calling_ae_title = models.CharField("calling AE title", max_length=16, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    accepted_count = models.PositiveIntegerField(default=0)
    duplicate_count = models.PositiveIntegerField(default=0)
    rejected_count = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ("-created_at", "-id")
        verbose_name_plural = "upload batches"
        indexes = (
            models.Index(fields=("study", "created_at"), name="batch_study_created"),
        )

    def __str__(self) -> str:
        return f"Upload {self.pk}"

    def get_absolute_url(self) -> str:
        return reverse("ingest:batch_detail", args=[self.pk])


class UploadItem(models.Model):
    """One file of a batch: accepted (new scan), duplicate (existing scan) or rejected."""

    class Outcome(models.TextChoices):
        ACCEPTED = "accepted"
        DUPLICATE = "duplicate"
        REJECTED = "rejected"

    batch = models.ForeignKey(
        UploadBatch, on_delete=models.CASCADE, related_name="items"
    )
    # The name the user gave the file; for a file inside a zip, its path in the zip.
    filename = models.CharField(max_length=500)
    # The uploaded zip a file came from, empty for a file uploaded on its own.
    archive = models.CharField(max_length=255, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    reason = models.TextField(blank=True)
    # Stored, but someone should look: e.g. a DICOM Patient ID that matched a patient
    # whose name or birth date differs (accepted because DICOM_PATIENT_MISMATCH=accept).
    review_flag = models.TextField(blank=True)
    # Refused for a passing reason (database, storage or queue trouble): the sender
    # should send it again (the DICOM receiver answers A700 instead of C000).
    retryable = models.BooleanField(default=False)
    sha256 = models.CharField(max_length=64, blank=True)
    scan = models.ForeignKey(
        Scan, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    # The analysis this file's progress follows (the existing one for a duplicate).
    analysis = models.ForeignKey(
        Analysis, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta:
        ordering = ("id",)

    def __str__(self) -> str:
        return f"{self.outcome} item {self.pk} of upload {self.batch_id}"
