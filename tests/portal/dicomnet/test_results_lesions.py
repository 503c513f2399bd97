"""The reader's lesions in the DICOM SR (issue 20, item 5): the lesion group of an image a
reader grouped is tracked as its lesion, one tracking UID in the SRs of all the lesion's
images, and carries the lesion's result and the image that drives it; an image in no
lesion, and a withheld one, keep the SR they had."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from portal.analyses.models import Analysis
from portal.clinical.services import lesion_record_pathology
from portal.dicomnet.results import (
    BIOPSY_OUTCOME,
    LESION_DRIVER,
    LESION_MALIGNANT,
    analysis_results,
    encode,
)
from portal.review.services import review_save, scan_lesion_new, scan_lesion_set
from tests.portal.dicomnet.conftest import finish_analysis, store_scan
from tests.portal.dicomnet.test_results import withhold
from tests.portal.dicomnet.test_results_conformance import (
    dciodvfy_errors,
    needs_dciodvfy,
)
from tests.portal.ingest.factories import GREY, dicom, png

pytestmark = pytest.mark.django_db


def _p(malignant: float) -> dict[str, float]:
    rest = 1.0 - malignant
    return {"normal": rest / 2, "benign": rest / 2, "malignant": malignant}


@pytest.fixture
def reader(make_user: Any) -> Any:
    return make_user("radiologist", "dr-lesions")


@pytest.fixture
def images(study: Any, user: Any) -> list[Any]:
    """Four analysed images of one study: a DICOM one and three PNG uploads."""
    scans = [
        store_scan(
            study,
            user,
            dicom(GREY, patient_id="H-0001", study_uid=generate_uid(), accession="A1"),
        ),
        store_scan(study, user, png(64, 48, value=80), name="b.png"),
        store_scan(study, user, png(64, 48, value=90), name="c.png"),
        store_scan(study, user, png(64, 48, value=100), name="d.png"),
    ]
    for scan, malignant in zip(scans, (0.30, 0.60, 0.20, 0.90), strict=True):
        finish_analysis(scan, probabilities=_p(malignant))
    return scans


def _analysis(scan: Any) -> Any:
    """The scan's analysis as a download reads it: the scan's grouping as stored now."""
    return Analysis.objects.select_related("scan__study__patient").get(scan=scan)


def _sr(scan: Any, review: Any = None) -> pydicom.Dataset:
    results = analysis_results(analysis=_analysis(scan), review=review)
    return pydicom.dcmread(io.BytesIO(encode(results.sr)))


def _source_uid(scan: Any) -> str:
    """The SOP instance UID of the image the scan's results reference."""
    results = analysis_results(analysis=_analysis(scan))
    source = results.source or pydicom.dcmread(scan.original.open("rb"))
    return str(source.SOPInstanceUID)


def _lesion_group(sr: pydicom.Dataset) -> Any:
    """The SR's TID 1410 group that references the SEG (the lesion, not its box)."""
    report = hd.sr.MeasurementReport.from_sequence([_root(sr)])
    (group,) = [
        group
        for group in report.get_planar_roi_measurement_groups()
        if group.referenced_segmentation_frame is not None
    ]
    return group


def _root(sr: pydicom.Dataset) -> pydicom.Dataset:
    root = pydicom.Dataset()
    for name in (
        "ValueType",
        "ConceptNameCodeSequence",
        "ContinuityOfContent",
        "ContentTemplateSequence",
        "ContentSequence",
    ):
        setattr(root, name, sr.get(name))
    return root


def _evidence(sr: pydicom.Dataset) -> set[str]:
    return {
        str(instance.ReferencedSOPInstanceUID)
        for name in (
            "CurrentRequestedProcedureEvidenceSequence",
            "PertinentOtherEvidenceSequence",
        )
        for study in sr.get(name, [])
        for series in study.ReferencedSeriesSequence
        for instance in series.ReferencedSOPSequence
    }


def _lesion_result(group: Any) -> tuple[float, str, str, bool]:
    """(the lesion's malignancy, the image it references, its derivation, whether this
    image drives it)."""
    (measurement,) = group.get_measurements(name=LESION_MALIGNANT)
    (image,) = measurement.referenced_images
    (driver,) = group.get_qualitative_evaluations(name=LESION_DRIVER)
    return (
        measurement.value,
        image.referenced_sop_instance_uid,
        measurement.derivation.meaning,
        driver.value == codes.SCT.Yes,
    )


def _content(sr: pydicom.Dataset) -> bytes:
    """The SR's identity and content tree, without the times it was made at."""
    kept = pydicom.Dataset()
    kept.SOPInstanceUID = sr.SOPInstanceUID
    kept.SeriesInstanceUID = sr.SeriesInstanceUID
    for name in (
        "ContentSequence",
        "CurrentRequestedProcedureEvidenceSequence",
        "PertinentOtherEvidenceSequence",
    ):
        if name in sr:
            setattr(kept, name, sr.get(name))
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, kept, implicit_vr=False, little_endian=True)
    return buffer.getvalue()


def test_the_images_of_one_lesion_share_its_tracking_uid_and_carry_its_result(
    images: list[Any], reader: Any
) -> None:
    dicom_scan, b, c, _ = images
    first = scan_lesion_new(scan=dicom_scan, user=reader)  # lesion A: 0.30 and 0.60
    scan_lesion_set(scan=b, lesion=first, user=reader)
    scan_lesion_new(scan=c, user=reader)  # lesion B: 0.20
    in_a, driver_a, in_b = (_lesion_group(_sr(scan)) for scan in (dicom_scan, b, c))

    assert in_a.tracking_identifier == driver_a.tracking_identifier == "lesion A"
    assert in_b.tracking_identifier == "lesion B"
    assert in_a.tracking_uid == driver_a.tracking_uid != in_b.tracking_uid
    # A UID made of the lesion's own identity: digits only, nothing of the patient.
    for group in (in_a, in_b):
        assert re.fullmatch(r"2\.25\.\d+", group.tracking_uid)
        assert len(group.tracking_uid) <= 64
    # Stable: the same download again gives the same UIDs.
    again = _sr(dicom_scan)
    assert _lesion_group(again).tracking_uid == in_a.tracking_uid
    assert again.SOPInstanceUID == _sr(dicom_scan).SOPInstanceUID

    # Each says the lesion's result and the image that drives it (b, at 60%).
    driver_uid = _source_uid(b)
    assert _lesion_result(in_a) == (
        pytest.approx(0.60),
        driver_uid,
        "Maximum",
        False,
    )
    assert _lesion_result(driver_a) == (
        pytest.approx(0.60),
        driver_uid,
        "Maximum",
        True,
    )
    assert _lesion_result(in_b) == (
        pytest.approx(0.20),
        _source_uid(c),
        "Maximum",
        True,
    )
    # The image that drives it is evidence of the SR of the other image.
    assert driver_uid in _evidence(_sr(dicom_scan))
    # The image's own probability stays with the image.
    area = in_a.get_measurements(name=codes.SCT.Area)
    assert len(area) == 1


def test_a_scan_in_no_lesion_keeps_its_sr_and_regrouping_makes_a_new_instance(
    images: list[Any], reader: Any
) -> None:
    dicom_scan, b, _, d = images
    before = {scan.pk: _sr(scan) for scan in (dicom_scan, d)}
    group = _lesion_group(before[dicom_scan.pk])
    assert group.tracking_identifier == "Lesion"  # per analysis, as before lesions
    assert not group.get_measurements(name=LESION_MALIGNANT)
    assert not group.get_qualitative_evaluations(name=LESION_DRIVER)

    lesion = scan_lesion_new(scan=dicom_scan, user=reader)
    alone = _sr(dicom_scan)
    # d is in no lesion: its SR is exactly what it was.
    assert _content(_sr(d)) == _content(before[d.pk])
    # dicom_scan's is a new instance (a PACS keeps both, never a changed one).
    assert alone.SOPInstanceUID != before[dicom_scan.pk].SOPInstanceUID
    assert alone.SeriesInstanceUID == before[dicom_scan.pk].SeriesInstanceUID
    # Another image becomes the lesion's most suspicious: a new instance again.
    scan_lesion_set(scan=b, lesion=lesion, user=reader)
    assert _sr(dicom_scan).SOPInstanceUID != alone.SOPInstanceUID
    # Out of the lesion again: the SR it had before.
    scan_lesion_set(scan=dicom_scan, lesion=None, user=reader)
    assert _content(_sr(dicom_scan)) == _content(before[dicom_scan.pk])


def _biopsy(group: Any) -> str | None:
    """The lesion group's biopsy outcome ("Benign" / "Malignant"), None where none."""
    found = group.get_qualitative_evaluations(name=BIOPSY_OUTCOME)
    assert len(found) <= 1
    return found[0].value.meaning if found else None


def test_a_lesions_biopsy_outcome_is_in_the_sr_of_each_of_its_images(
    images: list[Any], reader: Any
) -> None:
    dicom_scan, b, c, _ = images
    first = scan_lesion_new(scan=dicom_scan, user=reader)  # lesion A
    scan_lesion_set(scan=b, lesion=first, user=reader)
    scan_lesion_new(scan=c, user=reader)  # lesion B
    before = {scan.pk: _sr(scan) for scan in (dicom_scan, b, c)}
    assert {_biopsy(_lesion_group(sr)) for sr in before.values()} == {None}

    lesion_record_pathology(lesion=first, outcome="malignant", entered_by=reader)
    after = {scan.pk: _sr(scan) for scan in (dicom_scan, b, c)}
    for scan in (dicom_scan, b):
        group = _lesion_group(after[scan.pk])
        assert _biopsy(group) == "Malignant"
        assert group.tracking_uid == _lesion_group(before[scan.pk]).tracking_uid
        # What the SR says changed: a new instance, never a changed one.
        assert after[scan.pk].SOPInstanceUID != before[scan.pk].SOPInstanceUID
    # The result and its driver are reported as they were.
    assert _lesion_result(_lesion_group(after[b.pk])) == _lesion_result(
        _lesion_group(before[b.pk])
    )
    # Lesion B has no outcome: its SR is exactly what it was.
    assert _content(after[c.pk]) == _content(before[c.pk])

    lesion_record_pathology(lesion=first, outcome="benign", entered_by=reader)
    benign = _sr(b)
    assert _biopsy(_lesion_group(benign)) == "Benign"
    assert benign.SOPInstanceUID not in {
        before[b.pk].SOPInstanceUID,
        after[b.pk].SOPInstanceUID,
    }
    # Cleared: the SR the lesion had before any outcome.
    lesion_record_pathology(lesion=first, outcome="", entered_by=reader)
    assert _content(_sr(b)) == _content(before[b.pk])


def test_a_withheld_image_in_a_lesion_keeps_its_sr_with_no_lesion_group(
    study: Any, user: Any, images: list[Any], reader: Any
) -> None:
    photo = store_scan(study, user, png(64, 48, value=40), name="photo.png")
    withhold(photo, 0.12)
    before = _sr(photo)
    lesion = scan_lesion_new(scan=images[1], user=reader)
    scan_lesion_set(scan=photo, lesion=lesion, user=reader)
    assert _content(_sr(photo)) == _content(before)
    report = hd.sr.MeasurementReport.from_sequence([_root(_sr(photo))])
    assert not report.get_planar_roi_measurement_groups()
    # The lesion's result, in the SR of its other image, leaves the withheld one out.
    assert _lesion_result(_lesion_group(_sr(images[1])))[0] == pytest.approx(0.60)


def test_a_signed_readings_sr_tracks_the_lesion_on_the_readers_outline(
    images: list[Any], reader: Any
) -> None:
    import numpy as np

    dicom_scan, b, _, _ = images
    lesion = scan_lesion_new(scan=dicom_scan, user=reader)
    scan_lesion_set(scan=b, lesion=lesion, user=reader)
    edit = np.zeros((48, 64), bool)
    edit[20:40, 5:25] = True
    review = review_save(
        analysis=dicom_scan.analyses.get(),
        author=reader,
        sign=True,
        agrees_with_model=True,
        label="",
        birads="4A",
        outline_state="corrected",
        outline_mask=edit,
    )
    results = analysis_results(analysis=_analysis(dicom_scan), review=review)
    assert "radiologist" in results.seg.SeriesDescription  # the reader's outline
    sr = pydicom.dcmread(io.BytesIO(encode(results.sr)))
    group = _lesion_group(sr)
    assert group.referenced_segmentation_frame[0].referenced_sop_instance_uid == (
        results.seg.SOPInstanceUID
    )
    assert group.tracking_identifier == "lesion A"
    assert group.tracking_uid == _lesion_group(_sr(b)).tracking_uid
    assert _lesion_result(group)[:2] == (pytest.approx(0.60), _source_uid(b))
    assert sr.VerificationFlag == "VERIFIED"


@needs_dciodvfy
def test_the_srs_of_a_lesions_images_pass_dciodvfy(
    images: list[Any], reader: Any, make_user: Any, tmp_path: Path
) -> None:
    from tests.portal.dicomnet.conftest import signed_review

    dicom_scan, b, c, _ = images
    lesion = scan_lesion_new(scan=dicom_scan, user=reader)
    scan_lesion_set(scan=b, lesion=lesion, user=reader)
    biopsied = scan_lesion_new(scan=c, user=reader)
    lesion_record_pathology(lesion=biopsied, outcome="benign", entered_by=reader)
    review = signed_review(dicom_scan.analyses.get(), make_user, birads="4A")
    objects = {
        "dicom-in-a": analysis_results(analysis=_analysis(dicom_scan)).sr,
        "dicom-in-a-signed": analysis_results(
            analysis=_analysis(dicom_scan), review=review
        ).sr,
        "png-drives-a": analysis_results(analysis=_analysis(b)).sr,
        "png-alone-in-b": analysis_results(analysis=_analysis(c)).sr,
    }
    errors = {
        name: dciodvfy_errors(dataset, tmp_path / f"{name}.dcm")
        for name, dataset in objects.items()
    }
    assert errors == {name: [] for name in objects}
