"""Batch ingestion into a study: report rows, zips, DICOM, duplicates, enqueueing."""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from pydicom.uid import generate_uid

from portal.analyses.models import Analysis
from portal.clinical.models import Scan, Study
from portal.clinical.services import patient_create, study_create
from portal.ingest.models import UploadBatch, UploadItem
from portal.ingest.selectors import batch_progress
from portal.ingest.services import upload_to_study
from tests.conftest import TEST_MODEL_VERSION
from tests.portal.ingest.factories import (
    GREY,
    RGB,
    assert_model_input_stored,
    dicom,
    png,
    zip_of,
)

pytestmark = pytest.mark.django_db

Outcome = UploadItem.Outcome


def upload(study: Study, user: Any, *files: tuple[str, bytes]):
    return upload_to_study(
        study=study,
        files=[SimpleUploadedFile(name, content) for name, content in files],
        uploaded_by=user,
        model_version=TEST_MODEL_VERSION,
        source=UploadBatch.Source.WEB,
    )


def rows(result) -> dict[str, tuple[str, str]]:
    return {item.filename: (item.outcome, item.reason) for item in result.items}


def test_every_file_gets_a_row_accepted_or_rejected_with_its_reason(study, user):
    result = upload(
        study,
        user,
        ("one.png", png(value=1)),
        ("notes.png", b"a text file with an image name\n"),
        ("empty.png", b""),
        ("two.png", png(value=2)),
    )
    report = rows(result)
    assert report["one.png"][0] == report["two.png"][0] == Outcome.ACCEPTED
    assert report["notes.png"] == (Outcome.REJECTED, report["notes.png"][1])
    assert "not a recognised image" in report["notes.png"][1]
    assert "empty" in report["empty.png"][1]
    batch = result.batch
    assert (batch.accepted_count, batch.duplicate_count, batch.rejected_count) == (
        2,
        0,
        2,
    )
    assert batch.finished_at is not None
    accepted = result.of(Outcome.ACCEPTED)
    assert all(item.scan.study == study for item in accepted)
    assert all(item.analysis.status == Analysis.Status.QUEUED for item in accepted)


def test_uploads_and_zip_members_carry_the_model_input_the_worker_reads(study, user):
    result = upload(
        study,
        user,
        ("grey.png", png(value=3)),
        ("colour.png", png(value=4, mode="RGB")),
        ("scanner.dcm", dicom(RGB, photometric="RGB")),
        ("exam.zip", zip_of([("inside.png", png(value=5, width=90))])),
    )
    accepted = result.of(Outcome.ACCEPTED)
    assert len(accepted) == 4
    for item in accepted:
        assert_model_input_stored(item.scan)


def test_one_broken_file_in_a_zip_of_200_is_rejected_by_its_path_and_199_go_on(
    study, user, django_capture_on_commit_callbacks, enqueued
):
    members = [(f"left/img{i:03}.png", png(value=i)) for i in range(199)]
    members.insert(120, ("left/broken.png", png(value=250)[:70]))
    with django_capture_on_commit_callbacks(execute=True):
        result = upload(study, user, ("exam.zip", zip_of(members)))
    rejected = result.of(Outcome.REJECTED)
    assert [(r.filename, r.archive) for r in rejected] == [
        ("left/broken.png", "exam.zip")
    ]
    assert "corrupt or truncated" in rejected[0].reason
    accepted = result.of(Outcome.ACCEPTED)
    assert len(accepted) == 199
    assert accepted[0].filename == "left/img000.png"
    assert Scan.objects.get(pk=accepted[0].scan_id).original_filename == (
        "left/img000.png"
    )
    # Each accepted file is committed on its own and sent to the workers once.
    assert sorted(a for a, _ in enqueued) == sorted(i.analysis_id for i in accepted)


def test_the_same_image_again_is_linked_to_its_scan_and_not_analysed_twice(
    study, user, django_capture_on_commit_callbacks, enqueued
):
    content = png(value=42)
    with django_capture_on_commit_callbacks(execute=True):
        first = upload(study, user, ("a.png", content))
    (scan_id,) = [i.scan_id for i in first.items]
    with django_capture_on_commit_callbacks(execute=True):
        again = upload(
            study,
            user,
            ("renamed.png", content),
            ("batch.zip", zip_of([("x/a.png", content)])),
        )
    assert [i.outcome for i in again.items] == [Outcome.DUPLICATE, Outcome.DUPLICATE]
    assert {i.scan_id for i in again.items} == {scan_id}
    assert f"already uploaded as scan {scan_id}" in again.items[0].reason
    assert again.items[0].analysis_id == first.items[0].analysis_id
    assert Scan.objects.count() == 1 and Analysis.objects.count() == 1
    assert len(enqueued) == 1


def test_a_duplicate_inside_one_zip_is_recognised(study, user):
    content = png(value=5)
    result = upload(
        study, user, ("z.zip", zip_of([("a.png", content), ("b.png", content)]))
    )
    assert [i.outcome for i in result.items] == [Outcome.ACCEPTED, Outcome.DUPLICATE]


def test_a_duplicate_of_another_studys_scan_names_that_study(study, user, patient):
    other = study_create(patient=patient, created_by=user)
    content = png(value=77)
    upload(other, user, ("a.png", content))
    (item,) = upload(study, user, ("a.png", content)).items
    assert item.outcome == Outcome.DUPLICATE
    assert f"in study {other.pk}" in item.reason


def test_an_empty_zip_and_a_zip_without_images_are_explained(study, user):
    result = upload(
        study,
        user,
        ("empty.zip", zip_of([])),
        (
            "docs.zip",
            zip_of([("readme.txt", b"hello"), ("notes/report.pdf", b"%PDF-1.4")]),
        ),
    )
    report = rows(result)
    assert "the zip is empty" in report["empty.zip"][1]
    assert "no images in the zip" in report["docs.zip"][1]
    assert "none of its 2 file(s)" in report["docs.zip"][1]
    assert "not a recognised image" in report["readme.txt"][1]
    assert "not a recognised image" in report["notes/report.pdf"][1]


def test_hostile_zip_members_are_refused_and_the_rest_accepted(study, user):
    bomb = b"\0" * (8 * 1024 * 1024)
    members = [
        ("../../etc/cron.d/evil.png", png(value=1)),
        ("ok.png", png(value=2)),
        ("bomb.png", bomb),
    ]
    result = upload(study, user, ("mixed.zip", zip_of(members)))
    report = rows(result)
    assert report["ok.png"][0] == Outcome.ACCEPTED
    assert "unsafe path" in report["../../etc/cron.d/evil.png"][1]
    assert "zip bomb" in report["bomb.png"][1]


def test_a_nested_zip_is_bounded(study, user, settings):
    inner = zip_of([("inner.png", png(value=3))])
    deeper = zip_of([("deeper.zip", zip_of([("deep.png", png(value=4))]))])
    result = upload(
        study, user, ("outer.zip", zip_of([("inner.zip", inner), ("more.zip", deeper)]))
    )
    report = rows(result)
    assert report["inner.zip/inner.png"][0] == Outcome.ACCEPTED
    assert "level(s) deep" in report["more.zip/deeper.zip"][1]
    settings.INGEST_ZIP_MAX_DEPTH = 1
    result = upload(
        study,
        user,
        ("outer.zip", zip_of([("inner.zip", zip_of([("n.png", png(value=8))]))])),
    )
    assert "level(s) deep" in rows(result)["inner.zip"][1]


def test_other_archives_and_oversized_files_are_refused(study, user, settings):
    settings.UPLOAD_MAX_BYTES = 2000
    gzip = b"\x1f\x8b\x08\x00" + b"\0" * 50
    result = upload(
        study,
        user,
        ("scans.tar.gz", gzip),
        ("huge.png", png(200, 200, value=9) + b"\0" * 3000),
    )
    report = rows(result)
    assert (
        "gzip" in report["scans.tar.gz"][1] and "only zip" in report["scans.tar.gz"][1]
    )
    assert "larger than" in report["huge.png"][1]


def test_a_zip_renamed_to_png_is_still_opened(study, user):
    result = upload(study, user, ("photo.png", zip_of([("in/a.png", png(value=11))])))
    assert rows(result)["in/a.png"][0] == Outcome.ACCEPTED


# --- DICOM ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("grey.dcm", dicom(GREY)),
        ("grey16.dcm", dicom(GREY.astype(np.uint16) * 200)),
        ("rgb.dcm", dicom(RGB, photometric="RGB")),
        ("multi.dcm", dicom(np.stack([GREY, 255 - GREY, GREY // 2]), frames=3)),
        ("rle.dcm", dicom(GREY, transfer_syntax="rle")),
        ("rle-rgb.dcm", dicom(RGB, photometric="RGB", transfer_syntax="rle")),
        ("jpeg.dcm", dicom(GREY, transfer_syntax="jpeg")),
        ("jpeg-ybr.dcm", dicom(RGB, photometric="RGB", transfer_syntax="jpeg")),
    ],
)
def test_dicom_variants_are_accepted_with_their_spacing(study, user, name, content):
    (item,) = upload(study, user, (name, content)).items
    assert item.outcome == Outcome.ACCEPTED, item.reason
    scan = item.scan
    assert (scan.format, scan.width, scan.height) == ("DICOM", 64, 48)
    assert (scan.pixel_spacing_row_mm, scan.pixel_spacing_col_mm) == (0.1, 0.12)
    assert scan.original.name.endswith(".dcm")
    assert "H-0001" not in scan.original.name and "Jane" not in scan.original.name


def test_a_dicom_scan_keeps_its_scanner_and_a_png_has_none(study, user):
    uid = generate_uid()
    scanner = {"manufacturer": "Acme Medical", "model_name": "Sono 7", "study_uid": uid}
    result = upload(
        study,
        user,
        ("a.dcm", dicom(GREY, **scanner)),
        ("in.zip", zip_of([("b.dcm", dicom(RGB, photometric="RGB", **scanner))])),
        ("c.dcm", dicom(GREY.T.copy(), study_uid=uid)),
        ("d.png", png(value=12)),
    )
    scans = {item.filename: item.scan for item in result.items}
    for name in ("a.dcm", "b.dcm"):
        assert (scans[name].scanner_manufacturer, scans[name].scanner_model) == (
            "Acme Medical",
            "Sono 7",
        )
        assert scans[name].scanner.name == "Acme Medical Sono 7"
    # A DICOM file without the elements, and a PNG: the site's, no scanner named.
    for name in ("c.dcm", "d.png"):
        assert (scans[name].scanner_manufacturer, scans[name].scanner_model) == ("", "")
        assert scans[name].scanner.is_site


def test_the_first_dicom_gives_the_study_its_uid_and_accession(study, user):
    study.accession_number = ""
    study.save()
    upload(study, user, ("a.dcm", dicom(study_uid="1.2.3.4", accession="ACC-9")))
    study.refresh_from_db()
    assert (study.study_instance_uid, study.accession_number) == ("1.2.3.4", "ACC-9")
    (item,) = upload(
        study, user, ("b.dcm", dicom(GREY // 2, study_uid="1.2.3.4"))
    ).items
    assert item.outcome == Outcome.ACCEPTED


def test_a_dicom_of_another_patient_or_exam_is_refused(study, user, patient):
    study.study_instance_uid = "1.2.3"
    study.save()
    other_study = study_create(patient=patient, created_by=user)
    other_study.study_instance_uid = "9.9.9"
    other_study.save()
    result = upload(
        study,
        user,
        ("wrong-patient.dcm", dicom(patient_id="H-9999", study_uid="1.2.3")),
        ("other-exam.dcm", dicom(GREY // 3, study_uid="5.5.5")),
    )
    report = rows(result)
    assert (
        "for patient ID H-9999, not this study's patient (H-0001)"
        in report["wrong-patient.dcm"][1]
    )
    assert "another examination" in report["other-exam.dcm"][1]
    assert not Scan.objects.exists()


def test_a_dicom_of_a_study_already_in_the_portal_points_there(study, user, patient):
    fresh = study_create(patient=patient, created_by=user)
    study.study_instance_uid = "7.7.7"
    study.save()
    (item,) = upload(fresh, user, ("x.dcm", dicom(study_uid="7.7.7"))).items
    assert f"belongs to study {study.pk}" in item.reason


def test_dicom_without_pixel_data_is_refused_clearly(study, user):
    (item,) = upload(study, user, ("sr.dcm", dicom(None))).items
    assert item.outcome == Outcome.REJECTED
    assert "no pixel data" in item.reason


def test_dicom_with_an_undecodable_transfer_syntax_is_refused_clearly(study, user):
    import pydicom
    from pydicom.uid import JPEGLSLossless

    dataset = pydicom.dcmread(io.BytesIO(dicom(GREY)))
    dataset.file_meta.TransferSyntaxUID = JPEGLSLossless
    from pydicom.encaps import encapsulate

    dataset.PixelData = encapsulate([b"\xff\xd8not really jpeg-ls\xff\xd9"])
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    (item,) = upload(study, user, ("ls.dcm", buffer.getvalue())).items
    assert item.outcome == Outcome.REJECTED
    assert "JPEG-LS" in item.reason


# --- progress, logging ------------------------------------------------------------------


def test_progress_counts_analysed_failed_and_duplicates(study, user):
    upload(study, user, ("old.png", png(value=60)))
    result = upload(
        study,
        user,
        ("a.png", png(value=61)),
        ("b.png", png(value=62)),
        ("old-again.png", png(value=60)),
        ("bad.png", b"nope"),
    )
    new = [i.analysis_id for i in result.of(Outcome.ACCEPTED)]
    Analysis.objects.filter(pk=new[0]).update(status=Analysis.Status.SUCCEEDED)
    Analysis.objects.filter(pk=new[1]).update(status=Analysis.Status.FAILED)
    progress = batch_progress(batch=result.batch)
    assert progress["images"] == 3 and progress["rejected"] == 1
    assert (progress["analysed"], progress["failed"], progress["queued"]) == (1, 1, 1)
    assert not progress["finished"]
    Analysis.objects.filter(scan__original_filename="old.png").update(
        status=Analysis.Status.SUCCEEDED
    )
    assert batch_progress(batch=result.batch)["finished"]


def test_logs_name_no_file_and_no_patient(study, user, caplog):
    caplog.set_level(logging.DEBUG)
    upload(
        study,
        user,
        ("Jane Example H-0001.png", png(value=90)),
        ("Jane Example notes.png", b"text"),
        ("j.dcm", dicom(patient_id="H-7777", study_uid="3.3.3")),
    )
    text = caplog.text
    assert "Jane" not in text and "H-0001" not in text and "H-7777" not in text
    assert "accepted" in text


def test_patient_study_created_through_the_service_work(user):
    patient = patient_create(identifier="Z-1", name="Z")
    study = study_create(patient=patient, created_by=user)
    (item,) = upload(study, user, ("z.dcm", dicom(patient_id="Z-1"))).items
    assert item.outcome == Outcome.ACCEPTED


@pytest.mark.django_db(transaction=True)
def test_two_uploads_of_the_same_image_at_once_make_one_scan(study, user):
    import threading

    from django.db import connection

    content = png(value=123)
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def send() -> None:
        try:
            barrier.wait()
            (item,) = upload(study, user, ("same.png", content)).items
            outcomes.append(item.outcome)
        finally:
            connection.close()

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == [Outcome.ACCEPTED, Outcome.DUPLICATE]
    assert Scan.objects.filter(sha256=UploadItem.objects.first().sha256).count() == 1


def test_a_file_that_cannot_be_stored_is_rejected_and_the_others_go_on(
    study, user, monkeypatch
):
    from portal.ingest import services

    real = services.scan_submit

    def flaky(**kwargs: Any):
        if kwargs["upload"].original_filename == "full-disk.png":
            raise OSError(28, "No space left on device")
        return real(**kwargs)

    monkeypatch.setattr(services, "scan_submit", flaky)
    result = upload(
        study, user, ("full-disk.png", png(value=31)), ("ok.png", png(value=32))
    )
    report = rows(result)
    assert report["ok.png"][0] == Outcome.ACCEPTED
    assert "could not be stored" in report["full-disk.png"][1]
    assert Scan.objects.count() == 1


def test_a_file_that_meets_a_simultaneous_upload_is_stored_again(
    study, user, monkeypatch
):
    from django.db import IntegrityError

    from portal.ingest import services

    real = services.scan_submit
    clashes = {"again.png": 1, "always.png": services.STORE_ATTEMPTS}

    def clashing(**kwargs: Any):
        name = kwargs["upload"].original_filename
        if clashes.get(name, 0) > 0:
            clashes[name] -= 1
            raise IntegrityError("duplicate key value violates unique constraint")
        return real(**kwargs)

    monkeypatch.setattr(services, "scan_submit", clashing)
    result = upload(
        study, user, ("again.png", png(value=41)), ("always.png", png(value=42))
    )
    again, always = result.items
    # The first clash is rolled back and the file stored on the next attempt.
    assert again.outcome == Outcome.ACCEPTED and not again.retryable
    # Clashing on every attempt: refused, as worth sending again.
    assert always.outcome == Outcome.REJECTED and always.retryable
    assert always.reason.startswith("met a simultaneous upload")
    assert clashes == {"again.png": 0, "always.png": 0}
    assert Scan.objects.count() == 1


def test_decoded_pixels_are_not_kept_while_files_wait_to_be_stored():
    from dataclasses import fields

    from portal.clinical.uploads import validate_content

    upload = validate_content(filename="a.png", content=png(300, 200, value=7))
    assert (upload.width, upload.height, upload.format) == (300, 200, "PNG")
    assert all(
        not isinstance(getattr(upload, f.name), np.ndarray) for f in fields(upload)
    )


def test_files_are_stored_in_the_order_they_came(study, user):
    contents = [(f"{i:02}.png", png(value=i)) for i in range(12)]
    result = upload(
        study, user, ("z.zip", zip_of(contents)), ("last.png", png(value=99))
    )
    names = [item.filename for item in result.items]
    assert names == [name for name, _ in contents] + ["last.png"]
    scans = list(
        Scan.objects.order_by("pk").values_list("original_filename", flat=True)
    )
    assert scans == names


def test_a_dicom_whose_name_differs_from_the_chosen_studys_patient_is_flagged(user):
    patient = patient_create(identifier="Z-2", name="Zed Other")
    study = study_create(patient=patient, created_by=user)
    uid = generate_uid()
    (item,) = upload(
        study, user, ("z.dcm", dicom(patient_id="Z-2", study_uid=uid))
    ).items
    assert item.outcome == Outcome.ACCEPTED
    assert item.review_flag.startswith(
        f"its Patient ID matches patient {patient.pk}, whose name differ"
    )
    (same,) = upload(
        study,
        user,
        (
            "same.dcm",
            dicom(
                np.flipud(GREY).copy(),
                patient_id="Z-2",
                patient_name="OTHER^ZED",
                study_uid=uid,
            ),
        ),
    ).items
    assert same.outcome == Outcome.ACCEPTED and same.review_flag == ""


def test_a_patient_id_over_64_characters_is_refused_not_shortened(user):
    patient = patient_create(identifier="L" * 64, name="Jane Example")
    study = study_create(patient=patient, created_by=user)
    (item,) = upload(study, user, ("long.dcm", dicom(patient_id="L" * 65))).items
    assert item.outcome == Outcome.REJECTED
    assert item.reason.startswith("Patient ID is over 64 characters (65)")
