"""The C-STORE receiver with pynetdicom as the sending scanner."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from portal.analyses.models import Analysis
from portal.clinical.models import Patient, Scan, Study
from portal.ingest.models import UploadBatch, UploadItem
from tests.portal.dicomnet.conftest import SCANNER_AE, finished_batch
from tests.portal.ingest.factories import GREY, assert_model_input_stored, dicom

pytestmark = pytest.mark.slow

SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
]


def dataset(content: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(content))


def cine(frames: int = 12) -> np.ndarray:
    return np.stack([np.roll(GREY, shift, axis=1) for shift in range(frames)])


def associate(receiver: dict[str, Any], calling: str = SCANNER_AE) -> Any:
    ae = AE(ae_title=calling)
    # One context per transfer syntax: the receiver accepts one syntax per context.
    for sop_class in (UltrasoundImageStorage, UltrasoundMultiFrameImageStorage):
        for syntax in SYNTAXES:
            ae.add_requested_context(sop_class, syntax)
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", receiver["port"], ae_title=receiver["ae_title"])


def test_it_answers_echo_from_an_allowed_ae_title(receiver: dict[str, Any]) -> None:
    assoc = associate(receiver)
    assert assoc.is_established
    status = assoc.send_c_echo()
    assoc.release()
    assert status.Status == 0x0000
    # An echo is no upload.
    assert UploadBatch.objects.count() == 0


def test_it_rejects_an_ae_title_not_on_the_allow_list(
    receiver: dict[str, Any], enqueued: list
) -> None:
    assoc = associate(receiver, calling="INTRUDER")
    assert assoc.is_rejected
    assert not assoc.is_established
    assert UploadBatch.objects.count() == 0
    assert Scan.objects.count() == 0
    assert enqueued == []


def test_it_rejects_a_wrong_called_ae_title(receiver: dict[str, Any]) -> None:
    ae = AE(ae_title=SCANNER_AE)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", receiver["port"], ae_title="SOMEONE_ELSE")
    assert assoc.is_rejected


def test_each_instance_is_ingested_and_a_bad_one_stops_nothing(
    receiver: dict[str, Any], enqueued: list
) -> None:
    study_uid = generate_uid()
    plain = dicom(study_uid=study_uid, accession="ACC-9")
    jpeg = dicom(GREY, transfer_syntax="jpeg", study_uid=study_uid, accession="ACC-9")
    clip = dicom(cine(), frames=12, study_uid=study_uid, accession="ACC-9")
    no_pixels = dicom(None, study_uid=study_uid, accession="ACC-9")
    rle = dicom(
        np.flipud(GREY).copy(),
        transfer_syntax="rle",
        study_uid=study_uid,
        accession="ACC-9",
    )
    assoc = associate(receiver)
    assert assoc.is_established
    statuses = [
        assoc.send_c_store(dataset(content))
        for content in (plain, jpeg, no_pixels, clip, rle, plain)
    ]
    assoc.release()

    codes = [status.Status for status in statuses]
    assert codes == [0x0000, 0x0000, 0xC000, 0x0000, 0x0000, 0x0000]
    assert "no pixel data" in statuses[2].ErrorComment

    batch = finished_batch()
    assert batch.source == UploadBatch.Source.DICOM
    assert batch.calling_ae_title == SCANNER_AE
    assert (batch.accepted_count, batch.duplicate_count, batch.rejected_count) == (
        4,
        1,
        1,
    )
    items = list(batch.items.order_by("pk"))
    assert [i.outcome for i in items] == [
        UploadItem.Outcome.ACCEPTED,
        UploadItem.Outcome.ACCEPTED,
        UploadItem.Outcome.REJECTED,
        UploadItem.Outcome.ACCEPTED,
        UploadItem.Outcome.ACCEPTED,
        UploadItem.Outcome.DUPLICATE,
    ]
    assert items[2].reason == "DICOM file has no pixel data (not an image object)"
    assert items[2].filename.startswith("instance 3: ")

    # Matched or created by the instances' own tags: one patient, one study.
    patient = Patient.objects.get(identifier="H-0001")
    assert patient.name == "Jane Example"
    study = Study.objects.get(study_instance_uid=study_uid)
    assert study.patient == patient and study.accession_number == "ACC-9"
    scans = list(Scan.objects.filter(study=study).order_by("pk"))
    assert len(scans) == 4
    assert {s.format for s in scans} == {"DICOM"}
    assert scans[0].pixel_spacing_row_mm == pytest.approx(0.1)
    # The stored original is the instance as received (with its file meta).
    stored = pydicom.dcmread(scans[1].original.open("rb"))
    assert stored.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    stored_clip = pydicom.dcmread(scans[2].original.open("rb"))
    assert int(stored_clip.NumberOfFrames) == 12
    # Every accepted instance has its analysis queued, once.
    analyses = Analysis.objects.filter(scan__in=scans)
    assert analyses.count() == 4
    assert all(a.status == Analysis.Status.QUEUED for a in analyses)
    assert sorted(a for a, _ in enqueued) == sorted(a.pk for a in analyses)


def test_an_instance_without_patient_id_is_refused_with_the_reason(
    receiver: dict[str, Any], enqueued: list
) -> None:
    assoc = associate(receiver)
    status = assoc.send_c_store(dataset(dicom(patient_id="")))
    good = assoc.send_c_store(dataset(dicom()))
    assoc.release()
    assert status.Status == 0xC000
    assert good.Status == 0x0000
    batch = finished_batch()
    rejected = batch.items.get(outcome=UploadItem.Outcome.REJECTED)
    assert "no Patient ID" in rejected.reason
    assert len(enqueued) == 1


def test_a_received_instance_keeps_its_scanner(receiver: dict[str, Any]) -> None:
    content = dicom(manufacturer="Acme Medical", model_name="Sono 7")
    assoc = associate(receiver)
    status = assoc.send_c_store(dataset(content))
    assoc.release()

    assert status.Status == 0x0000
    finished_batch()
    scan = Scan.objects.get()
    assert (scan.scanner_manufacturer, scan.scanner_model) == ("Acme Medical", "Sono 7")
    # As every ingestion path stores a scan: with the model input the worker reads.
    assert_model_input_stored(scan)
