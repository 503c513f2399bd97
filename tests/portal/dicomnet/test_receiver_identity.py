"""Finding 3 of issue 18: a Patient ID is never shortened, and a Patient ID that names a
patient with another name or birth date is refused, or filed and flagged, as configured.

The receiver runs in this process (pynetdicom as the sending scanner); the statuses are
what a PACS or scanner would get back.
"""

from __future__ import annotations

import io
from typing import Any

import pydicom
import pytest
from django.urls import reverse
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import UltrasoundImageStorage

from portal.clinical.models import Patient, Scan
from portal.ingest.models import UploadItem
from tests.portal.dicomnet.conftest import SCANNER_AE, finished_batch
from tests.portal.ingest.factories import GREY, dicom

pytestmark = pytest.mark.slow

# Two different patients whose IDs agree on their first 64 characters.
LONG_PREFIX = "HOSPITAL-A/" + "0" * 53
assert len(LONG_PREFIX) == 64


def send(receiver: dict[str, Any], contents: list[bytes]) -> list[Any]:
    ae = AE(ae_title=SCANNER_AE)
    ae.add_requested_context(UltrasoundImageStorage)
    assoc = ae.associate("127.0.0.1", receiver["port"], ae_title=receiver["ae_title"])
    assert assoc.is_established
    statuses = [
        assoc.send_c_store(pydicom.dcmread(io.BytesIO(content))) for content in contents
    ]
    assoc.release()
    return statuses


def instance(seed: int, **options: Any) -> bytes:
    """A distinct image (its own sha256) of the given patient and study."""
    pixels = GREY.copy()
    pixels[0, 0] = seed
    return dicom(pixels, **options)


def test_patient_ids_over_64_characters_are_refused_never_shortened_and_merged(
    receiver: dict[str, Any], enqueued: list
) -> None:
    first = instance(
        1,
        patient_id=LONG_PREFIX + "1",
        patient_name="First^Anna",
        birth_date="19600101",
        study_uid=generate_uid(),
    )
    second = instance(
        2,
        patient_id=LONG_PREFIX + "2",
        patient_name="Second^Berta",
        birth_date="19900202",
        study_uid=generate_uid(),
    )
    exactly_64 = instance(3, patient_id=LONG_PREFIX, study_uid=generate_uid())

    statuses = send(receiver, [first, second, exactly_64])

    assert [s.Status for s in statuses] == [0xC000, 0xC000, 0x0000]
    for status in statuses[:2]:
        assert status.ErrorComment.startswith("Patient ID is over 64 characters (65)")
    batch = finished_batch()
    refused = batch.items.filter(outcome=UploadItem.Outcome.REJECTED)
    assert refused.count() == 2
    assert all("not shortened" in item.reason for item in refused)
    # Only the 64-character ID became a patient; nothing was filed under a cut ID.
    assert list(Patient.objects.values_list("identifier", flat=True)) == [LONG_PREFIX]
    assert Scan.objects.count() == 1
    assert len(enqueued) == 1


def test_a_patient_id_of_a_patient_with_another_name_or_birth_date_is_refused(
    receiver: dict[str, Any], enqueued: list
) -> None:
    study_uid = generate_uid()
    original = instance(1, patient_name="Example^Jane", study_uid=study_uid)
    other_name = instance(2, patient_name="Other^Olga", study_uid=study_uid)
    other_birth = instance(3, birth_date="19991231", study_uid=study_uid)
    same_person = instance(4, patient_name="EXAMPLE^JANE", study_uid=study_uid)

    statuses = send(receiver, [original, other_name, other_birth, same_person])

    assert [s.Status for s in statuses] == [0x0000, 0xC000, 0xC000, 0x0000]
    assert statuses[1].ErrorComment.startswith(
        "Patient ID matches a patient with another name"
    )
    assert statuses[2].ErrorComment.startswith(
        "Patient ID matches a patient with another birth date"
    )
    patient = Patient.objects.get()
    assert patient.name == "Jane Example"
    assert Scan.objects.filter(study__patient=patient).count() == 2
    items = list(finished_batch().items.order_by("pk"))
    assert [i.outcome for i in items] == [
        "accepted",
        "rejected",
        "rejected",
        "accepted",
    ]
    assert f"patient {patient.pk}" in items[1].reason
    # The reason names the attribute that differs, never the values.
    assert "Olga" not in items[1].reason and "1999" not in items[2].reason


def test_with_mismatch_accept_it_is_filed_and_flagged_for_review(
    receiver: dict[str, Any], enqueued: list, settings: Any, client: Any, user: Any
) -> None:
    settings.DICOM_PATIENT_MISMATCH = "accept"
    study_uid = generate_uid()
    original = instance(1, study_uid=study_uid)
    other = instance(2, patient_name="Other^Olga", study_uid=study_uid)

    statuses = send(receiver, [original, other])

    assert [s.Status for s in statuses] == [0x0000, 0x0000]
    batch = finished_batch()
    first, second = batch.items.order_by("pk")
    assert first.review_flag == ""
    patient = Patient.objects.get()
    assert second.outcome == UploadItem.Outcome.ACCEPTED
    assert second.scan.study.patient == patient
    assert second.review_flag.startswith(
        f"its Patient ID matches patient {patient.pk}, whose name differ"
    )
    # Shown in the upload report.
    client.force_login(user)
    page = client.get(reverse("ingest:batch_detail", args=[batch.pk]))
    assert page.status_code == 200
    assert "Check: its Patient ID matches patient" in page.content.decode()
