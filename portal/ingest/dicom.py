"""What a DICOM file says about its patient and study, in the portal's terms.

Values are taken as the file has them, never shortened: a Patient ID longer than the
64 characters of its VR (LO) is refused by the placement rules, because cutting it could
file two different patients as one.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass


@dataclass(frozen=True)
class DicomIdentity:
    patient_identifier: str
    patient_name: str
    birth_date: datetime.date | None
    study_instance_uid: str
    accession_number: str
    study_date: datetime.date | None

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> DicomIdentity:
        return cls(
            patient_identifier=tags.get("PatientID", "").strip(),
            patient_name=person_name(tags.get("PatientName", ""))[:200],
            birth_date=dicom_date(tags.get("PatientBirthDate", "")),
            study_instance_uid=tags.get("StudyInstanceUID", "").strip()[:64],
            accession_number=tags.get("AccessionNumber", "").strip()[:64],
            study_date=dicom_date(tags.get("StudyDate", "")),
        )


PATIENT_ID_MAX_LENGTH = 64  # LO, and the portal's Patient.identifier


def same_person_name(a: str, b: str) -> bool:
    """Whether two names (portal form) are the same, ignoring case and spacing."""
    return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()


def person_name(value: str) -> str:
    """DICOM PN "Family^Given^Middle^Prefix^Suffix" as "Prefix Given Middle Family Suffix"."""
    alphabetic = value.split("=", 1)[0]
    parts = [p.strip() for p in alphabetic.split("^")] + [""] * 5
    family, given, middle, prefix, suffix = parts[:5]
    return " ".join(p for p in (prefix, given, middle, family, suffix) if p)


def dicom_date(value: str) -> datetime.date | None:
    """DICOM DA is YYYYMMDD (old files: YYYY.MM.DD); anything else is unknown."""
    digits = value.strip().replace(".", "").replace("-", "")
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        return datetime.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None
