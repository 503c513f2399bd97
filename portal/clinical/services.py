"""Writes to patients, studies and scans (keyword-only, typed, atomic)."""

from __future__ import annotations

import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from portal.clinical.models import (
    FORMAT_EXTENSIONS,
    BiopsyOutcome,
    Lesion,
    Pathology,
    Patient,
    Scan,
    Study,
)
from portal.clinical.scanners import Scanner
from portal.clinical.uploads import ValidatedUpload


@transaction.atomic
def patient_create(
    *, identifier: str, name: str, birth_date: datetime.date | None = None
) -> Patient:
    patient = Patient(
        identifier=identifier.strip(), name=name.strip(), birth_date=birth_date
    )
    patient.full_clean()
    patient.save()
    return patient


@transaction.atomic
def study_create(
    *,
    patient: Patient,
    created_by: AbstractBaseUser,
    study_date: datetime.date | None = None,
    accession_number: str = "",
    description: str = "",
) -> Study:
    study = Study(
        patient=patient,
        created_by=created_by,
        accession_number=accession_number.strip(),
        description=description.strip(),
    )
    if study_date is not None:
        study.study_date = study_date
    study.full_clean()
    study.save()
    return study


@transaction.atomic
def scan_create(
    *,
    study: Study,
    upload: ValidatedUpload,
    uploaded_by: AbstractBaseUser,
) -> Scan:
    """Store a validated upload, its display copy and its model input (if it has one).

    Its analysis is queued by the layer above (portal.analyses.services.scan_submit):
    clinical imports no app above it.
    """
    scan = Scan(
        study=study,
        original_filename=upload.original_filename,
        sha256=upload.sha256,
        width=upload.width,
        height=upload.height,
        format=upload.format,
        uploaded_by=uploaded_by,
    )
    scanner = Scanner.from_tags(upload.dicom)
    scan.scanner_manufacturer, scan.scanner_model = scanner.manufacturer, scanner.model
    if upload.pixel_spacing_mm is not None:
        scan.pixel_spacing_row_mm, scan.pixel_spacing_col_mm = upload.pixel_spacing_mm
    extension = FORMAT_EXTENSIONS.get(upload.format, "bin")
    # upload_to derives the stored name from ids; this name only carries the extension.
    scan.original.save(f"original.{extension}", ContentFile(upload.content), save=False)
    scan.display.save("display.png", ContentFile(upload.display), save=False)
    if upload.model_input is not None:
        scan.model_input.save("input.npy", ContentFile(upload.model_input), save=False)
    scan.save()
    return scan


def scan_display_name(*, scan: Scan) -> str:
    """The storage name of the scan's display copy.

    Scans stored before display copies existed get theirs here, on first use, by
    decoding the original once; every later view reads the stored copy.
    """
    if scan.display and default_storage.exists(scan.display.name):
        return scan.display.name
    from ml.decode import decode_image
    from ml.render import display_copy

    with default_storage.open(scan.original.name, "rb") as stored:
        original = stored.read()
    content = display_copy(original, decode_image(original).pixels)
    missing = scan.display.name or ""  # never made, or lost from storage
    scan.display.save("display.png", ContentFile(content), save=False)
    updated = Scan.objects.filter(pk=scan.pk, display=missing).update(
        display=scan.display.name
    )
    if not updated:  # another request made it first: keep one copy
        default_storage.delete(scan.display.name)
        scan.refresh_from_db(fields=["display"])
    return scan.display.name


# Who may enter a biopsy outcome, on a study or on one of its lesions.
RECORD_PATHOLOGY = "clinical.record_pathology"


def _checked_pathology(
    *, outcome: str, biopsy_date: datetime.date | None, entered_by: AbstractBaseUser
) -> None:
    """Refuse what no biopsy outcome may be: entered by a user without the permission, an
    outcome other than benign or malignant, a biopsy dated in the future."""
    if not entered_by.has_perm(RECORD_PATHOLOGY):
        raise PermissionDenied("Only a user who may record biopsy outcomes enters one.")
    if outcome and outcome not in Pathology.values:
        raise ValidationError(
            f"{outcome!r} is not a pathology outcome (benign or malignant)."
        )
    if biopsy_date is not None and biopsy_date > timezone.localdate():
        raise ValidationError("The biopsy date is in the future.")


def _set_pathology(
    record: Study | Lesion,
    *,
    outcome: str,
    biopsy_date: datetime.date | None,
    entered_by: AbstractBaseUser,
) -> None:
    """Write the outcome (or clear it, with who and when) through save(), so the audit
    trail keeps every value it ever had."""
    record.pathology = outcome
    record.pathology_date = biopsy_date if outcome else None
    record.pathology_entered_by = entered_by if outcome else None
    record.pathology_entered_at = timezone.now() if outcome else None
    record.save(update_fields=BiopsyOutcome.FIELDS)


@transaction.atomic
def study_record_pathology(
    *,
    study: Study,
    outcome: str,
    entered_by: AbstractBaseUser,
    biopsy_date: datetime.date | None = None,
) -> Study:
    """Record (or clear, with outcome "") the study's biopsy outcome and who entered it.

    The outcome is the ground truth a site calibration learns from, ahead of the signed
    label, for the study's images that are in no lesion with an outcome of its own.
    """
    _checked_pathology(outcome=outcome, biopsy_date=biopsy_date, entered_by=entered_by)
    study = Study.objects.select_for_update().get(pk=study.pk)
    _set_pathology(
        study, outcome=outcome, biopsy_date=biopsy_date, entered_by=entered_by
    )
    return study


@transaction.atomic
def lesion_record_pathology(
    *,
    lesion: Lesion,
    outcome: str,
    entered_by: AbstractBaseUser,
    biopsy_date: datetime.date | None = None,
) -> Lesion:
    """Record (or clear, with outcome "") one lesion's biopsy outcome and who entered it.

    The ground truth of the lesion's images, ahead of the study's outcome and of the
    signed label: a study of a benign and a malignant lesion gives each its own class.
    Audited as the study's is (every value, who entered it, and a clearing).
    """
    _checked_pathology(outcome=outcome, biopsy_date=biopsy_date, entered_by=entered_by)
    lesion = Lesion.objects.select_for_update().get(pk=lesion.pk)
    _set_pathology(
        lesion, outcome=outcome, biopsy_date=biopsy_date, entered_by=entered_by
    )
    return lesion
