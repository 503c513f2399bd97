"""Placement rules: which patient and study an ingested file belongs to.

Ingestion (services.py) validates and stores files; a placement decides where each one
goes, from the study the user chose, from the file's DICOM tags, or from the folders it
was found in. Each rule refuses a file it cannot place with UploadRejected, saying
why, and may create the patient or study it names (inside the caller's transaction,
holding a lock on the patient identifier and study UID so that simultaneous uploads of
the same new patient or study wait for each other rather than collide). What a rule
stores but wants a person to check (a DICOM Patient ID matching a patient whose name or
birth date differs, with DICOM_PATIENT_MISMATCH=accept) it appends to `flags`, which the
upload report shows.
"""

from __future__ import annotations

from typing import Protocol

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser

from portal.clinical.models import Patient, Study
from portal.clinical.services import patient_create, study_create
from portal.clinical.uploads import UploadRejected, ValidatedUpload
from portal.ingest.dicom import PATIENT_ID_MAX_LENGTH, DicomIdentity, same_person_name
from portal.ingest.locks import advisory_lock

NAME_NOT_GIVEN = "(name not given)"


class Placement(Protocol):
    def study_for(
        self, upload: ValidatedUpload, folders: tuple[str, ...], *, flags: list[str]
    ) -> Study:
        """The study a validated file belongs to; raises UploadRejected if there is none."""


def check_identifier_length(identifier: str) -> None:
    """Refuse a Patient ID the portal would have to shorten (which could merge two
    patients whose IDs differ only after the limit)."""
    if len(identifier) > PATIENT_ID_MAX_LENGTH:
        raise UploadRejected(
            f"Patient ID is over {PATIENT_ID_MAX_LENGTH} characters "
            f"({len(identifier)}); refused, not shortened: shortening could file two "
            "different patients as one. Correct the Patient ID (0010,0020) at the source"
        )


def check_demographics(
    patient: Patient,
    identity: DicomIdentity,
    *,
    flags: list[str],
    policy: str | None = None,
) -> None:
    """A file whose Patient ID names `patient` but whose name or birth date differ is
    refused (policy "reject") or filed and flagged (policy "accept"); the policy is
    DICOM_PATIENT_MISMATCH unless given.

    A value missing on either side is no disagreement. Neither value is repeated in the
    reason: the report says which attribute differs and which patient it matched.
    """
    differ = []
    if (
        identity.patient_name
        and patient.name
        and patient.name != NAME_NOT_GIVEN
        and not same_person_name(identity.patient_name, patient.name)
    ):
        differ.append("name")
    if (
        identity.birth_date
        and patient.birth_date
        and identity.birth_date != patient.birth_date
    ):
        differ.append("birth date")
    if not differ:
        return
    what = " and ".join(differ)
    if (policy or settings.DICOM_PATIENT_MISMATCH) == "accept":
        flags.append(
            f"its Patient ID matches patient {patient.pk}, whose {what} differ from the "
            "file's; it was filed under that patient. Check that it is the same person"
        )
        return
    raise UploadRejected(
        f"Patient ID matches a patient with another {what}; refused: patient "
        f"{patient.pk} has this Patient ID but a different {what}. Check which patient "
        "this is (DICOM_PATIENT_MISMATCH=reject)"
    )


class IntoStudy:
    """Everything goes into one study; a DICOM file must agree with it."""

    def __init__(self, study: Study) -> None:
        self.study = study

    def study_for(
        self, upload: ValidatedUpload, folders: tuple[str, ...], *, flags: list[str]
    ) -> Study:
        if not upload.dicom:
            return self.study
        identity = DicomIdentity.from_tags(upload.dicom)
        patient = self.study.patient
        check_identifier_length(identity.patient_identifier)
        if (
            identity.patient_identifier
            and identity.patient_identifier != patient.identifier
        ):
            raise UploadRejected(
                f"this DICOM file is for patient ID {identity.patient_identifier}, not "
                f"this study's patient ({patient.identifier}); upload it to a study of "
                "that patient"
            )
        if identity.patient_identifier:
            # The uploader chose this study: filed, and flagged for a second look.
            check_demographics(patient, identity, flags=flags, policy="accept")
        if identity.study_instance_uid:
            _adopt_study_instance_uid(self.study, identity)
        return self.study


def _adopt_study_instance_uid(study: Study, identity: DicomIdentity) -> None:
    """Give a study the UID of its first DICOM file; refuse files of another exam."""
    uid = identity.study_instance_uid
    # The same lock ByTagsAndFolders takes before it files a study under this UID.
    advisory_lock("study", uid)
    current = Study.objects.select_for_update().get(pk=study.pk)
    if current.study_instance_uid == uid:
        return
    if current.study_instance_uid:
        raise UploadRejected(
            "this DICOM file is from another examination (its study instance UID is "
            "not this study's); upload it to the study of that examination"
        )
    other = Study.objects.filter(study_instance_uid=uid).first()
    if other is not None:
        raise UploadRejected(
            f"this DICOM file belongs to study {other.pk} (same study instance UID); "
            "upload it there"
        )
    current.study_instance_uid = uid
    fields = ["study_instance_uid"]
    if not current.accession_number and identity.accession_number:
        current.accession_number = identity.accession_number
        fields.append("accession_number")
    current.save(update_fields=fields)
    study.study_instance_uid = current.study_instance_uid
    study.accession_number = current.accession_number


class ByTagsAndFolders:
    """Place files by their DICOM tags, else by folders named PATIENT/STUDY/.

    A DICOM file's own patient ID, study instance UID and accession number win; other
    images take the patient's hospital identifier from the first folder and the study's
    accession number from the second. Patients and studies are matched or created.
    """

    def __init__(self, *, created_by: AbstractBaseUser) -> None:
        self.created_by = created_by

    def study_for(
        self, upload: ValidatedUpload, folders: tuple[str, ...], *, flags: list[str]
    ) -> Study:
        identity = DicomIdentity.from_tags(upload.dicom) if upload.dicom else None
        identifier = (identity and identity.patient_identifier) or (
            folders[0] if folders else ""
        )
        if not identifier:
            raise UploadRejected(
                "cannot tell which patient this file is for: put it under a folder "
                "named by the patient's hospital identifier (PATIENT/STUDY/file), "
                "or import it with --study"
            )
        check_identifier_length(identifier)
        uid = identity.study_instance_uid if identity else ""
        # Serialise with every other transaction placing a file of this patient or
        # study: the second one waits, then finds what the first created.
        advisory_lock("patient", identifier)
        if uid:
            advisory_lock("study", uid)
        patient = self._patient(identifier, identity, flags=flags)
        if uid:
            study = Study.objects.filter(study_instance_uid=uid).first()
            if study is not None:
                if study.patient_id != patient.pk:
                    raise UploadRejected(
                        f"its study instance UID belongs to study {study.pk} of another "
                        "patient; check the file's patient ID"
                    )
                return study
        accession = (identity and identity.accession_number) or (
            folders[1][:64] if len(folders) > 1 else ""
        )
        if not accession and not uid:
            raise UploadRejected(
                "cannot tell which study this file is for: put it in a study folder "
                "inside the patient's folder (PATIENT/STUDY/file), or import it with "
                "--study"
            )
        study = None
        if accession:
            advisory_lock("accession", f"{patient.pk}/{accession}")
            study = (
                Study.objects.select_for_update()
                .filter(patient=patient, accession_number=accession)
                .order_by("pk")
                .first()
            )
        if study is None:
            study = study_create(
                patient=patient,
                created_by=self.created_by,
                accession_number=accession,
                study_date=identity.study_date if identity else None,
                description="Imported",
            )
        if uid and not study.study_instance_uid:
            study.study_instance_uid = uid
            study.save(update_fields=["study_instance_uid"])
        return study

    def _patient(
        self, identifier: str, identity: DicomIdentity | None, *, flags: list[str]
    ) -> Patient:
        patient = Patient.objects.filter(identifier=identifier).first()
        if patient is not None:
            if identity is not None:
                check_demographics(patient, identity, flags=flags)
            return patient
        name = identity.patient_name if identity else ""
        return patient_create(
            identifier=identifier,
            name=name or NAME_NOT_GIVEN,
            birth_date=identity.birth_date if identity else None,
        )


class ByDicomTags(ByTagsAndFolders):
    """Place DICOM instances received over the network by their own tags only."""

    def study_for(
        self, upload: ValidatedUpload, folders: tuple[str, ...], *, flags: list[str]
    ) -> Study:
        identity = DicomIdentity.from_tags(upload.dicom) if upload.dicom else None
        if identity is None:
            raise UploadRejected("not a DICOM instance")
        if not identity.patient_identifier:
            raise UploadRejected(
                "it has no Patient ID (0010,0020), so it cannot be matched to a patient"
            )
        if not identity.study_instance_uid and not identity.accession_number:
            raise UploadRejected(
                "it has neither a Study Instance UID (0020,000D) nor an Accession "
                "Number (0008,0050), so it cannot be matched to a study"
            )
        return super().study_for(upload, (), flags=flags)
