from __future__ import annotations

import uuid
from pathlib import PurePosixPath

from django.conf import settings
from django.db import models
from django.db.models.functions import Upper
from django.urls import reverse
from django.utils import timezone

from portal.clinical.scanners import SCANNER_FIELD_LENGTH, Scanner

# Storage names use ids and a random uuid only: never patient data, never the
# uploaded file name (kept in a column instead).
FORMAT_EXTENSIONS = {
    "PNG": "png",
    "JPEG": "jpg",
    "BMP": "bmp",
    "TIFF": "tif",
    "DICOM": "dcm",
}


class Patient(models.Model):
    identifier = models.CharField("hospital identifier", max_length=64, unique=True)
    name = models.CharField(max_length=200)
    birth_date = models.DateField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ("identifier",)
        indexes = (
            models.Index(fields=("name",), name="patient_name"),
            # The dashboard's patient filter compares hospital ids without case
            # (identifier__iexact: UPPER(identifier) = UPPER(...)), which the unique
            # index on identifier cannot answer: 4 s at 50,000 patients without it.
            models.Index(Upper("identifier"), name="patient_identifier_upper"),
        )

    def __str__(self) -> str:
        return f"{self.identifier} {self.name}"

    def get_absolute_url(self) -> str:
        return reverse("clinical:patient_detail", args=[self.pk])


class Pathology(models.TextChoices):
    BENIGN = "benign", "benign (biopsy)"
    MALIGNANT = "malignant", "malignant (biopsy)"


class BiopsyOutcome(models.Model):
    """A biopsy outcome and who entered it: ground truth, ahead of the radiologist's
    signed label, for the site's calibration and the training export. A study has one
    (clinical.services.study_record_pathology); so has each lesion a reader groups its
    images into (lesion_record_pathology: a study of two lesions may hold a benign one
    and a malignant one), and a lesion's comes first for its images
    (portal.review.selectors.with_ground_truth). Entered only through those services,
    which the audit trail follows."""

    pathology = models.CharField(
        "pathology outcome", max_length=16, choices=Pathology.choices, blank=True
    )
    pathology_date = models.DateField("biopsy date", null=True, blank=True)
    pathology_entered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
    )
    pathology_entered_at = models.DateTimeField(null=True, blank=True)

    # What a recording writes (clinical.services._set_pathology's update_fields).
    FIELDS = (
        "pathology",
        "pathology_date",
        "pathology_entered_by",
        "pathology_entered_at",
    )

    class Meta:
        abstract = True


class Study(BiopsyOutcome):
    patient = models.ForeignKey(
        Patient, on_delete=models.PROTECT, related_name="studies"
    )
    accession_number = models.CharField(max_length=64, blank=True)
    # DICOM (0020,000D): how DICOM files from the same examination find this study.
    study_instance_uid = models.CharField(
        "study instance UID", max_length=64, blank=True
    )
    study_date = models.DateField(default=timezone.localdate)
    description = models.CharField(max_length=255, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    # Kept by portal.review.services.study_review_refresh whenever an analysis of the
    # study succeeds or one of its reviews is signed, so that the worklist and the
    # navigation's count read one indexed row per study instead of walking every scan,
    # analysis and review (seconds per page at 10,000 studies on SQLite).
    awaiting_review = models.BooleanField(
        default=False,
        editable=False,
        help_text="A scan has a finished analysis and no signed review.",
    )
    max_malignant = models.FloatField(
        null=True,
        blank=True,
        editable=False,
        help_text="Highest malignant probability of the study's finished analyses.",
    )
    suspicious = models.BooleanField(
        default=False,
        editable=False,
        help_text="A finished analysis is at or above the site's operating threshold.",
    )

    class Meta:
        ordering = (
            "-study_date",
            "-id",
        )
        verbose_name_plural = "studies"
        permissions = (("record_pathology", "Can record a biopsy outcome"),)
        indexes = (
            models.Index(fields=("study_date", "id"), name="study_date"),
            models.Index(fields=("accession_number",), name="study_accession"),
            # The worklist and its count: only the studies waiting, walked in the
            # worklist's order. A partial index because SQLite filters a boolean as a
            # bare column, which no ordinary index serves.
            models.Index(
                fields=("-suspicious", "-max_malignant", "-study_date", "-id"),
                condition=models.Q(awaiting_review=True),
                name="study_worklist_suspicious",
            ),
        )
        constraints = (
            models.UniqueConstraint(
                fields=("study_instance_uid",),
                condition=~models.Q(study_instance_uid=""),
                name="study_instance_uid_unique",
            ),
        )

    def __str__(self) -> str:
        return f"Study {self.pk} ({self.study_date:%Y-%m-%d})"

    def get_absolute_url(self) -> str:
        return reverse("clinical:study_detail", args=[self.pk])


def lesion_label(index: int) -> str:
    """The label of a study's lesion number ``index`` (0-based): A, B, ..., Z, AA, AB, ..."""
    label = ""
    index += 1
    while index:
        index, letter = divmod(index - 1, 26)
        label = chr(ord("A") + letter) + label
    return label


class Lesion(BiopsyOutcome):
    """One lesion of a study, as a reader groups the study's images: the scans that show
    the same lesion point at it (Scan.lesion), and its result is its most suspicious
    image's (portal.analyses.selectors.lesion_malignancies).

    Made and filled by portal.review.services (a reader's act, under the permission to
    sign readings); a lesion is never deleted or relabelled, so "lesion B" means the same
    thing in every report and audit entry, even after its last image left it.
    """

    # Its identity outside this database, as Scan.uuid is the scan's: the DICOM SRs of
    # its images derive the lesion's tracking UID from it (portal.dicomnet.results), the
    # same in every SR and unique across installations sending to one PACS.
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="lesions")
    label = models.CharField(max_length=8)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ("study", "id")
        constraints = (
            models.UniqueConstraint(
                fields=("study", "label"), name="lesion_one_label_per_study"
            ),
        )

    def __str__(self) -> str:
        return f"Lesion {self.label} of study {self.study_id}"


def scan_original_path(scan: Scan, filename: str) -> str:
    extension = FORMAT_EXTENSIONS.get(scan.format, "bin")
    return str(PurePosixPath("scans", str(scan.study_id), f"{scan.uuid}.{extension}"))


def scan_display_path(scan: Scan, filename: str) -> str:
    return str(PurePosixPath("scans", str(scan.study_id), f"{scan.uuid}-display.png"))


def scan_model_input_path(scan: Scan, filename: str) -> str:
    return str(PurePosixPath("scans", str(scan.study_id), f"{scan.uuid}-input.npy"))


class Scan(models.Model):
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="scans")
    original = models.FileField(upload_to=scan_original_path, max_length=255)
    original_filename = models.CharField(max_length=255)
    # An 8-bit PNG at display size (ml.render.display_copy), made once when the scan is
    # stored: pages, thumbnails and the report draw this, never the original.
    display = models.FileField(upload_to=scan_display_path, blank=True, max_length=255)
    # The network's input (ml.model_input: the scan squeezed to the model's square),
    # made at upload while the pixels are decoded: the worker reads it instead of
    # decoding the original. Empty for scans stored before these existed; a model of
    # another input size decodes the original.
    model_input = models.FileField(
        upload_to=scan_model_input_path, blank=True, max_length=255
    )
    sha256 = models.CharField(max_length=64, db_index=True)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    format = models.CharField(max_length=16)
    # Millimetres per pixel (row, column) when the source says so (DICOM); else unknown.
    pixel_spacing_row_mm = models.FloatField(null=True, blank=True)
    pixel_spacing_col_mm = models.FloatField(null=True, blank=True)
    # DICOM Manufacturer (0008,0070) and Manufacturer's Model Name (0008,1090), both LO:
    # a site calibration may be fitted per scanner model. Empty for PNG/JPEG.
    scanner_manufacturer = models.CharField(max_length=SCANNER_FIELD_LENGTH, blank=True)
    scanner_model = models.CharField(max_length=SCANNER_FIELD_LENGTH, blank=True)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    uploaded_at = models.DateTimeField(default=timezone.now, editable=False)
    # The lesion of its study this image shows, when a reader grouped it (at most one;
    # a lesion of the same study: portal.review.services.scan_lesion_set).
    lesion = models.ForeignKey(
        Lesion,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="scans",
    )

    class Meta:
        ordering = (
            "uploaded_at",
            "id",
        )
        indexes = (
            models.Index(fields=("uploaded_at", "id"), name="scan_uploaded"),
            # The newest upload of a set of studies, read from the index alone: where
            # the dashboard filters studies by date, its walk down the upload order
            # starts there (review.selectors.dashboard_rows).
            models.Index(fields=("study", "uploaded_at"), name="scan_study_uploaded"),
        )

    def __str__(self) -> str:
        return f"Scan {self.pk}"

    @property
    def scanner(self) -> Scanner:
        return Scanner(self.scanner_manufacturer, self.scanner_model)

    def area_mm2(self, fraction: float | None) -> float | None:
        """Area of a fraction of the image in mm², when the pixel spacing is known."""
        if (
            fraction is None
            or self.pixel_spacing_row_mm is None
            or self.pixel_spacing_col_mm is None
        ):
            return None
        pixels = fraction * self.width * self.height
        return pixels * self.pixel_spacing_row_mm * self.pixel_spacing_col_mm
