"""Issue 18 findings 8 and 9: the SEG, the SRs (the model's and the reader's) and the
secondary captures pass dicom3tools' `dciodvfy` with no error, and carry the source's
laterality, body part and pixel spacing.

`dciodvfy` is the IOD checker PACS teams run (Debian package dicom3tools; .ci/run
installs it). Every "Error" line it prints fails the test.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from portal.dicomnet.results import (
    BIRADS_CODES,
    CLASS_PROBABILITY_CODES,
    SERIES_NUMBERS,
    analysis_results,
    encode,
)
from tests.portal.dicomnet.conftest import (
    finish_analysis,
    read_seg,
    signed_review,
    store_scan,
)
from tests.portal.ingest.factories import GREY, png

DCIODVFY = shutil.which("dciodvfy")
needs_dciodvfy = pytest.mark.skipif(
    DCIODVFY is None,
    reason="dicom3tools' dciodvfy is not installed (apt-get install dicom3tools; "
    ".ci/run installs it)",
)


def dciodvfy_errors(dataset: pydicom.Dataset, path: Path) -> list[str]:
    path.write_bytes(encode(dataset))
    result = subprocess.run(
        [DCIODVFY, "-new", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.startswith("Error")
    ]


def right_breast_scan(study: Any, user: Any) -> Any:
    """An ultrasound DICOM scan of the right breast, as a scanner writes one."""
    from bench.synthetic import ultrasound_dataset

    dataset = ultrasound_dataset(
        GREY, patient_id="H-0001", study_uid=generate_uid(), accession="A1"
    )
    dataset.Laterality = "R"
    dataset.BodyPartExamined = "BREAST"
    dataset.PatientOrientation = ["A", "F"]
    dataset.PatientSex = "F"
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return store_scan(study, user, buffer.getvalue())


@needs_dciodvfy
def test_seg_sr_and_sc_pass_dciodvfy_with_no_error(
    study: Any, user: Any, make_user: Any, tmp_path: Path
) -> None:
    scan = right_breast_scan(study, user)
    analysis = finish_analysis(scan)
    review = signed_review(analysis, make_user, birads="4A")
    model = analysis_results(analysis=analysis)
    reading = analysis_results(analysis=analysis, review=review)
    objects = {
        "seg": model.seg,
        "sr-model": model.sr,
        "sr-reader": reading.sr,
        "overlay": model.overlay,
    }
    # A PNG upload: its source is a secondary capture made by the portal.
    png_scan = store_scan(study, user, png(64, 48, value=70), name="a.png")
    png_results = analysis_results(analysis=finish_analysis(png_scan))
    objects |= {
        "png-source": png_results.source,
        "png-seg": png_results.seg,
        "png-sr": png_results.sr,
        "png-overlay": png_results.overlay,
    }
    errors = {
        name: dciodvfy_errors(dataset, tmp_path / f"{name}.dcm")
        for name, dataset in objects.items()
    }
    assert errors == {name: [] for name in objects}


def test_laterality_body_part_and_pixel_measures_are_copied(
    study: Any, user: Any
) -> None:
    scan = right_breast_scan(study, user)
    results = analysis_results(analysis=finish_analysis(scan))
    seg = pydicom.dcmread(io.BytesIO(encode(results.seg)))
    overlay = pydicom.dcmread(io.BytesIO(encode(results.overlay)))
    assert overlay.Laterality == "R"
    assert seg.ImageLaterality == "R"  # the SEG IOD's place for it
    for dataset in (seg, overlay):
        assert dataset.BodyPartExamined == "BREAST"
    assert list(seg.PatientOrientation) == ["A", "F"]
    assert list(overlay.PatientOrientation) == ["A", "F"]
    assert [float(v) for v in overlay.PixelSpacing] == [0.1, 0.12]
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert [float(v) for v in measures.PixelSpacing] == [0.1, 0.12]
    # No Slice Thickness: a 2D ultrasound image has none, and since CP 1426 a SEG needs
    # one only with a Frame of Reference (there is none here).
    assert "SliceThickness" not in measures
    assert "FrameOfReferenceUID" not in seg
    assert read_seg(encode(results.seg)).get_segment_description(1).segment_label == (
        "Lesion"
    )
    # The SR says which breast: a finding site with its laterality.
    sr = hd.sr.srread(io.BytesIO(encode(results.sr)))
    sites = [
        item
        for item in _walk(sr)
        if item.ConceptNameCodeSequence[0].CodeValue == "363698007"
    ]
    assert sites, "no Finding Site in the SR"
    lateralities = {
        modifier.ConceptCodeSequence[0].CodeValue
        for site in sites
        for modifier in site.get("ContentSequence", [])
        if modifier.ConceptNameCodeSequence[0].CodeValue == "272741003"
    }
    assert lateralities == {codes.SCT.Right.value}


def test_probabilities_are_class_named_concepts_and_birads_standard_codes(
    study: Any, user: Any, make_user: Any
) -> None:
    scan = right_breast_scan(study, user)
    analysis = finish_analysis(
        scan, probabilities={"normal": 0.05, "benign": 0.25, "malignant": 0.7}
    )
    review = signed_review(analysis, make_user, birads="4A")
    model = analysis_results(analysis=analysis)
    reading = analysis_results(analysis=analysis, review=review)
    sr = hd.sr.srread(io.BytesIO(encode(model.sr)))
    numbers = {
        item.ConceptNameCodeSequence[0].CodeMeaning: float(
            item.MeasuredValueSequence[0].NumericValue
        )
        for item in _walk(sr)
        if item.ValueType == "NUM"
        and item.ConceptNameCodeSequence[0].CodeMeaning.startswith("Probability")
    }
    assert numbers == pytest.approx(
        {
            "Probability of normal": 0.05,
            "Probability of benign": 0.25,
            "Probability of malignant": 0.7,
        }
    )
    assert set(CLASS_PROBABILITY_CODES) == {"normal", "benign", "malignant"}
    # The reader's SR: its own series, the reader's name as the person observer,
    # BI-RADS 4A as the standard (SNOMED CT) category 4 code.
    read = hd.sr.srread(io.BytesIO(encode(reading.sr)))
    assert read.SeriesInstanceUID != model.sr.SeriesInstanceUID
    assert int(read.SeriesNumber) == SERIES_NUMBERS["reading"]
    observers = [
        str(item.PersonName)
        for item in _walk(read)
        if item.ValueType == "PNAME"
        and item.ConceptNameCodeSequence[0].CodeValue == "121008"
    ]
    assert observers == ["Reader^Ada"]
    categories = [
        item.ConceptCodeSequence[0]
        for item in _walk(read)
        if item.ValueType == "CODE"
        and item.ConceptNameCodeSequence[0].CodeValue == "111005"
    ]
    assert [(c.CodeValue, c.CodingSchemeDesignator) for c in categories] == [
        ("397144001", "SCT")
    ]
    assert BIRADS_CODES["4A"].value == "397144001"
    assert all(code.scheme_designator != "99BUSAI" for code in BIRADS_CODES.values())


def _walk(dataset: Any) -> list[Any]:
    found = []
    for item in dataset.get("ContentSequence", []):
        found.append(item)
        found += _walk(item)
    return found
