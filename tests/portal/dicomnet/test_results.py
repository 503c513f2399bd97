"""Results written as DICOM SEG, SR and secondary capture, read back with highdicom."""

from __future__ import annotations

import io
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

from portal.dicomnet.results import (
    CLASS_PROBABILITY_CODES,
    GATE_SCORE,
    MODEL_NAME,
    NOT_ANALYSED,
    NOT_RELIABLE,
    OOD_SCORE,
    ResultsUnavailable,
    analysis_results,
    encode,
)
from tests.portal.dicomnet.conftest import (
    finish_analysis,
    read_seg,
    signed_review,
    store_scan,
)
from tests.portal.ingest.factories import GREY, RGB, dicom, png


def roundtrip(dataset: pydicom.Dataset) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(encode(dataset)))


def lesion_mask(height: int = 48, width: int = 64) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    mask[12:30, 18:44] = True
    mask[12:16, 18:22] = False  # not a rectangle: the SEG must keep the shape
    return mask


def groups(sr: pydicom.Dataset) -> list[Any]:
    parsed = hd.sr.srread(io.BytesIO(encode(sr)))
    content = parsed.ContentSequence
    report = hd.sr.MeasurementReport.from_sequence([_root(parsed)])
    assert content
    return report


def text_items(dataset: pydicom.Dataset) -> set[tuple[str, str]]:
    """Every (concept name, text) of the SR's TEXT content items, at any depth."""
    found = set()
    for item in dataset.get("ContentSequence", []):
        if item.ValueType == "TEXT":
            found.add((item.ConceptNameCodeSequence[0].CodeMeaning, item.TextValue))
        found |= text_items(item)
    return found


def _root(sr: pydicom.Dataset) -> pydicom.Dataset:
    root = pydicom.Dataset()
    for name in (
        "ValueType",
        "ConceptNameCodeSequence",
        "ContinuityOfContent",
        "ContentTemplateSequence",
        "ContentSequence",
    ):
        if name in sr:
            setattr(root, name, sr.get(name))
    return root


@pytest.fixture
def dicom_scan(study: Any, user: Any) -> Any:
    content = dicom(GREY, patient_id="H-0001", study_uid=generate_uid(), accession="A1")
    return store_scan(study, user, content)


def test_seg_references_the_source_and_keeps_the_mask(dicom_scan: Any) -> None:
    mask = lesion_mask()
    analysis = finish_analysis(dicom_scan, mask=mask)
    results = analysis_results(analysis=analysis)
    source = pydicom.dcmread(dicom_scan.original.open("rb"))
    assert results.source is None  # the scan was DICOM: it is its own source

    seg = read_seg(encode(results.seg))
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.PatientID == source.PatientID == "H-0001"
    assert (seg.Rows, seg.Columns) == (source.Rows, source.Columns)
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
    assert (
        referenced.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        == source.SOPInstanceUID
    )
    description = seg.get_segment_description(1)
    assert description.segmented_property_type == codes.SCT.Lesion
    assert description.algorithm_identification[0].AlgorithmVersion == (
        analysis.model_version
    )
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[source.SOPInstanceUID], segment_numbers=[1]
    )
    np.testing.assert_array_equal(pixels[0, ..., 0].astype(bool), mask)
    # On the source's pixel grid, no frame of reference: the millimetres stay with the
    # source it references.
    assert "FrameOfReferenceUID" not in seg
    assert "PixelSpacing" in source


def test_sr_says_class_probabilities_area_box_and_model(dicom_scan: Any) -> None:
    mask = lesion_mask()
    analysis = finish_analysis(
        dicom_scan,
        mask=mask,
        probabilities={"normal": 0.05, "benign": 0.25, "malignant": 0.7},
    )
    results = analysis_results(analysis=analysis)
    sr = roundtrip(results.sr)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert sr.VerificationFlag == "UNVERIFIED"
    report = groups(results.sr)

    output = report.get_image_measurement_groups(tracking_uid=None)
    assert output, "no image-level group"
    model = output[0]
    assert model.finding_type == codes.SCT.Malignant
    assert model.tracking_identifier == "Model output"
    probabilities = {
        label: model.get_measurements(name=concept)[0].value
        for label, concept in CLASS_PROBABILITY_CODES.items()
    }
    assert probabilities == pytest.approx(
        {"normal": 0.05, "benign": 0.25, "malignant": 0.7}
    )
    # No bare "Probability" whose class is only in a qualifier.
    assert not model.get_measurements(name=codes.DCM.Probability)
    texts = text_items(sr)
    assert ("Algorithm Version", analysis.model_version) in texts
    assert ("Algorithm Name", MODEL_NAME) in texts
    assert ("Device Observer Model Name", analysis.model_version) in texts

    lesion, box = report.get_planar_roi_measurement_groups()
    area = lesion.get_measurements(name=codes.SCT.Area)[0]
    assert area.unit == codes.UCUM.SquareMillimeter
    assert area.value == pytest.approx(mask.sum() * 0.1 * 0.12, rel=1e-6)
    segment = lesion.referenced_segmentation_frame
    assert segment.referenced_sop_instance_uid == results.seg.SOPInstanceUID
    polyline = box.roi.value
    rows, cols = np.nonzero(mask)
    assert polyline[:4].tolist() == [
        [cols.min(), rows.min()],
        [cols.max() + 1, rows.min()],
        [cols.max() + 1, rows.max() + 1],
        [cols.min(), rows.max() + 1],
    ]
    source = pydicom.dcmread(dicom_scan.original.open("rb"))
    image = box.roi.ContentSequence[0].ReferencedSOPSequence[0]
    assert image.ReferencedSOPInstanceUID == source.SOPInstanceUID
    # The evidence lists the source and the SEG in the same study.
    evidence = {
        item.ReferencedSOPInstanceUID
        for series in sr.CurrentRequestedProcedureEvidenceSequence
        for s in series.ReferencedSeriesSequence
        for item in s.ReferencedSOPSequence
    }
    assert evidence == {source.SOPInstanceUID, results.seg.SOPInstanceUID}


def test_the_same_analysis_gives_the_same_uids(dicom_scan: Any) -> None:
    analysis = finish_analysis(dicom_scan)
    first, second = (
        analysis_results(analysis=analysis),
        analysis_results(analysis=analysis),
    )
    for kind in ("seg", "sr", "overlay"):
        a, b = first.names[kind], second.names[kind]
        assert a.SOPInstanceUID == b.SOPInstanceUID
        assert a.SeriesInstanceUID == b.SeriesInstanceUID
    assert len({d.SOPInstanceUID for d in first.datasets()}) == 3


def test_not_reliable_flag_and_ood_score_when_the_analysis_has_them(
    dicom_scan: Any,
) -> None:
    analysis = finish_analysis(dicom_scan)
    # Read when the analysis has them (the OOD check's fields), absent otherwise.
    analysis.in_distribution = False
    analysis.ood_score = 7.5
    report = groups(analysis_results(analysis=analysis).sr)
    model = report.get_image_measurement_groups()[0]
    flag = model.get_qualitative_evaluations(name=NOT_RELIABLE)[0]
    assert flag.value == codes.SCT.Yes
    score = model.get_measurements(name=OOD_SCORE)[0]
    assert score.value == pytest.approx(7.5)


def test_signed_reading_goes_in_and_verifies_the_sr(
    dicom_scan: Any, make_user: Any
) -> None:
    analysis = finish_analysis(dicom_scan)
    review = signed_review(analysis, make_user, birads="3", note="stable cyst")
    unsigned = analysis_results(analysis=analysis)
    results = analysis_results(analysis=analysis, review=review)
    sr = roundtrip(results.sr)
    assert sr.VerificationFlag == "VERIFIED"
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "Reader^Ada"
    assert sr.CompletionFlag == "COMPLETE"
    # A new SR instance, the SEG unchanged.
    assert sr.SOPInstanceUID != unsigned.sr.SOPInstanceUID
    assert results.seg.SOPInstanceUID == unsigned.seg.SOPInstanceUID
    report = groups(results.sr)
    reading = report.get_image_measurement_groups()[-1]
    assert reading.finding_type == codes.SCT.Benign
    assert reading.tracking_identifier == "Radiologist reading v1"
    category = reading.get_qualitative_evaluations(name=codes.DCM.AssessmentCategory)[0]
    assert (category.value.value, category.value.scheme_designator) == (
        "397143007",
        "SCT",
    )


def test_png_scan_gets_a_secondary_capture_source_with_stable_uids(
    study: Any, user: Any
) -> None:
    first = store_scan(study, user, png(64, 48, value=40), name="a.png")
    second = store_scan(study, user, png(64, 48, value=90), name="b.png")
    analysis = finish_analysis(second)
    results = analysis_results(analysis=analysis)
    source = results.source
    assert source is not None
    assert source.SOPClassUID == SecondaryCaptureImageStorage
    assert source.PatientID == "H-0001"
    assert source.AccessionNumber == "ACC1"
    # Pixels are the uploaded image.
    back = roundtrip(source)
    assert back.pixel_array.shape == (48, 64, 3)
    assert int(back.pixel_array[5, 5, 0]) == 90
    # The references resolve to the source SC; the study UID is the study's, whichever
    # scan it is built for.
    seg = roundtrip(results.seg)
    assert (
        seg.ReferencedSeriesSequence[0]
        .ReferencedInstanceSequence[0]
        .ReferencedSOPInstanceUID
        == source.SOPInstanceUID
    )
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    first_results = analysis_results(analysis=finish_analysis(first))
    assert first_results.source.StudyInstanceUID == source.StudyInstanceUID
    assert first_results.source.SeriesInstanceUID == source.SeriesInstanceUID
    assert first_results.source.SOPInstanceUID != source.SOPInstanceUID
    # No pixel spacing: the area is a percentage of the image.
    lesion = groups(results.sr).get_planar_roi_measurement_groups()[0]
    area = lesion.get_measurements(name=codes.SCT.Area)[0]
    assert area.unit == codes.UCUM.Percent
    assert results.datasets()[0].SOPInstanceUID == source.SOPInstanceUID


def test_cine_clip_seg_marks_the_analysed_first_frame(study: Any, user: Any) -> None:
    clip = np.stack([np.roll(RGB, shift, axis=1) for shift in range(6)])
    scan = store_scan(
        study,
        user,
        dicom(clip, photometric="RGB", frames=6, transfer_syntax="jpeg"),
    )
    mask = lesion_mask()
    results = analysis_results(analysis=finish_analysis(scan, mask=mask))
    seg = read_seg(encode(results.seg))
    assert seg.NumberOfFrames == 1
    derivation = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    source_ref = derivation.SourceImageSequence[0]
    assert source_ref.ReferencedFrameNumber == 1
    overlay = roundtrip(results.overlay)
    assert overlay.SourceImageSequence[0].ReferencedSOPInstanceUID == (
        pydicom.dcmread(scan.original.open("rb")).SOPInstanceUID
    )
    assert overlay.BurnedInAnnotation == "YES"


def test_an_empty_mask_is_a_seg_with_an_empty_frame(dicom_scan: Any) -> None:
    analysis = finish_analysis(
        dicom_scan,
        mask=np.zeros((48, 64), bool),
        probabilities={"normal": 0.9, "benign": 0.05, "malignant": 0.05},
    )
    results = analysis_results(analysis=analysis)
    seg = roundtrip(results.seg)
    assert int(seg.NumberOfFrames) == 1
    assert not seg.pixel_array.any()
    # No box without a lesion.
    assert len(groups(results.sr).get_planar_roi_measurement_groups()) == 1


def test_an_unfinished_analysis_has_no_results(dicom_scan: Any) -> None:
    with pytest.raises(ResultsUnavailable, match="queued"):
        analysis_results(analysis=dicom_scan.analyses.get())


def test_once_signed_the_readers_outline_is_the_seg(
    dicom_scan: Any, make_user: Any
) -> None:
    from portal.review.services import review_save

    analysis = finish_analysis(dicom_scan, mask=lesion_mask())
    reader = make_user("radiologist", "dr-outline")
    edit = np.zeros((48, 64), bool)
    edit[20:40, 5:25] = True
    review = review_save(
        analysis=analysis,
        author=reader,
        sign=True,
        agrees_with_model=True,
        label="",
        birads="4A",
        outline_state="corrected",
        outline_mask=edit,
    )
    model = analysis_results(analysis=analysis)
    signed = analysis_results(analysis=analysis, review=review)
    source = pydicom.dcmread(dicom_scan.original.open("rb"))

    seg = read_seg(encode(signed.seg))
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[source.SOPInstanceUID], segment_numbers=[1]
    )
    np.testing.assert_array_equal(pixels[0, ..., 0].astype(bool), edit)
    assert seg.get_segment_description(1).SegmentAlgorithmType == "MANUAL"
    assert signed.seg.SOPInstanceUID != model.seg.SOPInstanceUID
    assert "radiologist" in signed.overlay.SeriesDescription
    # Without the signed reading the model's own outline is sent, as the model's.
    model_seg = read_seg(encode(model.seg))
    assert model_seg.get_segment_description(1).SegmentAlgorithmType == "AUTOMATIC"

    # "No lesion" signed: an empty SEG frame.
    no_lesion = review_save(
        analysis=analysis,
        author=reader,
        sign=True,
        agrees_with_model=True,
        label="",
        birads="1",
        outline_state="no_lesion",
    )
    empty = analysis_results(analysis=analysis, review=no_lesion)
    assert not np.asarray(empty.seg.pixel_array).any()


def withhold(scan: Any, gate_score: float) -> Any:
    """Record the gate's verdict "not a breast ultrasound" as a worker does."""
    from portal.analyses import services

    analysis = scan.analyses.get()
    assert services.analysis_claim(analysis_id=analysis.pk, worker="test")
    services.analysis_record_success(
        analysis_id=analysis.pk,
        result={
            "label": "malignant",
            "probabilities": {"normal": 0.1, "benign": 0.2, "malignant": 0.7},
            "confidence": 0.7,
            "lesion_area_fraction": 0.1,
            "bbox": None,
            "withheld": True,
            "gate_score": gate_score,
        },
        artifacts={},
    )
    analysis.refresh_from_db()
    assert analysis.withheld and not analysis.mask
    return analysis


def test_a_withheld_scan_gets_only_an_sr_saying_why(
    dicom_scan: Any, study: Any, user: Any
) -> None:
    results = analysis_results(analysis=withhold(dicom_scan, 0.12))
    assert results.seg is None and results.overlay is None and results.source is None
    assert results.datasets() == [results.sr]
    assert set(results.names) == {"sr"}
    source = pydicom.dcmread(dicom_scan.original.open("rb"))
    assert roundtrip(results.sr).StudyInstanceUID == source.StudyInstanceUID
    (group,) = groups(results.sr).get_image_measurement_groups()
    assert group.finding_type == NOT_ANALYSED
    assert group.get_measurements(name=GATE_SCORE)[0].value == pytest.approx(0.12)
    for concept in CLASS_PROBABILITY_CODES.values():
        assert not group.get_measurements(name=concept)
    # A PNG upload: its portal-made source goes before the SR that references it.
    png_scan = store_scan(study, user, png(64, 48, value=70), name="a.png")
    png_results = analysis_results(analysis=withhold(png_scan, 0.3))
    assert png_results.seg is None and png_results.overlay is None
    assert png_results.source is not None
    assert png_results.source.SOPClassUID == SecondaryCaptureImageStorage
    assert png_results.datasets() == [png_results.source, png_results.sr]
