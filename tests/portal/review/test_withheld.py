"""A withheld analysis (the gate: not a breast ultrasound image) shows no label,
probabilities or outline anywhere: review page, study page feed, dashboard (counted
apart, filterable), worklist, API, PDF report, DICOM objects, file downloads.

The result is recorded through the worker's own path (analysis_record_success) with a
full verdict and artifacts, so these tests also prove the service drops them."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from django.urls import reverse
from PIL import Image

from portal.analyses.models import Analysis
from portal.analyses.services import scan_submit
from portal.clinical.uploads import validate_content
from tests.conftest import TEST_MODEL_VERSION
from tests.portal.review.conftest import VERDICT, verdict_artifacts
from tests.results import record_result

from .pdftext import pdf_text

pytestmark = pytest.mark.django_db

LEAKS = ("0.8765", "0.877", "87.7", "87.6", "0.0823", "12.3%", "malignant")
MESSAGE = "not analysed: not a breast ultrasound image"


def _png(width: int = 64, height: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width), 80, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _recorded(study, user, *, withheld: bool, filename: str) -> Analysis:
    upload = validate_content(filename=filename, content=_png())
    scan = scan_submit(
        study=study, upload=upload, uploaded_by=user, model_version=TEST_MODEL_VERSION
    )
    analysis = scan.analyses.get()
    assert record_result(
        analysis,
        artifacts=verdict_artifacts(48, 64),
        withheld=withheld,
        gate_score=9.75 if withheld else 0.5,
        in_distribution=False,
        ood_score=50.0,
        **VERDICT,
    )
    analysis.refresh_from_db()
    return analysis


@pytest.fixture
def withheld(study, user) -> Analysis:
    return _recorded(study, user, withheld=True, filename="photo.png")


def _no_verdict(text: str) -> None:
    for leak in LEAKS:
        assert leak not in text, leak


def test_the_service_keeps_no_verdict_and_no_files_of_a_withheld_scan(withheld):
    assert withheld.status == Analysis.Status.SUCCEEDED
    assert (withheld.withheld, withheld.gate_score) == (True, 9.75)
    assert withheld.label == "" and withheld.explained_class == ""
    assert withheld.probabilities is None and withheld.confidence is None
    assert withheld.bbox is None and withheld.lesion_area_fraction is None
    assert withheld.suspicious is None
    assert withheld.artifact_names() == {}
    # The raw output is kept for the record (never shown), and the caution is not
    # raised on top of the gate's verdict.
    assert withheld.logits == VERDICT["logits"]
    assert not withheld.outside_training_distribution


def test_the_review_page_says_why_and_shows_nothing_of_the_model(
    client, radiologist, withheld
):
    client.force_login(radiologist)
    response = client.get(reverse("review:scan_review", args=[withheld.scan_id]))
    page = response.content.decode()
    assert response.status_code == 200
    assert "Not analysed: not a breast ultrasound image." in page
    assert '<span class="gate-score">9.75</span>' in page
    assert 'class="probabilities"' not in page
    assert 'data-layer="outline"' not in page and "ood-warning" not in page
    assert "segmentation (SEG)" not in page
    _no_verdict(page.split('id="review"')[0])


def test_the_study_feed_carries_no_verdict(client, user, withheld):
    client.force_login(user)
    feed = client.get(reverse("clinical:study_status", args=[withheld.scan.study_id]))
    analysis = feed.json()["scans"][0]["analysis"]
    assert analysis["withheld"] is True and analysis["gate_score"] == 9.75
    assert analysis["withheld_message"] == MESSAGE
    assert analysis["layers"] == [] and analysis["artifacts"] == {}
    for key in ("label", "probabilities", "confidence", "bbox", "suspicious"):
        assert analysis[key] is None, key
    _no_verdict(json.dumps(analysis))


def test_the_dashboard_counts_withheld_apart_and_filters_them(
    client, user, study, withheld
):
    shown = _recorded(study, user, withheld=False, filename="breast.png")
    client.force_login(user)
    page = client.get(reverse("review:dashboard")).content.decode()
    assert '<span class="n">1</span> not analysed (not a breast ultrasound)' in page
    # The shown one counts as malignant; the withheld one under no label.
    assert '<div class="tile label-malignant"><span class="n">1</span>' in page
    only = client.get(reverse("review:dashboard"), {"distribution": "withheld"})
    only = only.content.decode()
    assert "photo.png" in only and "breast.png" not in only
    assert MESSAGE in only
    _no_verdict(only.split('id="dashboard-rows"')[1])
    others = client.get(reverse("review:dashboard"), {"distribution": "outside"})
    assert "breast.png" in others.content.decode()
    assert "photo.png" not in others.content.decode()
    assert shown.label == "malignant"


def test_the_api_gives_no_verdict(client, user, withheld):
    client.force_login(user)
    body = client.get(reverse("api:analysis-detail", args=[withheld.pk])).json()
    assert body["withheld"] is True and body["gate_score"] == 9.75
    assert body["label"] == "" and body["probabilities"] is None
    assert body["mask_url"] is None and body["overlay_url"] is None
    assert "logits" not in body
    _no_verdict(json.dumps(body))
    study = client.get(
        reverse("api:study-detail", args=[withheld.scan.study_id])
    ).content.decode()
    _no_verdict(study)


def test_the_pdf_report_says_why_and_gives_no_verdict(client, radiologist, withheld):
    client.force_login(radiologist)
    response = client.get(reverse("review:study_report", args=[withheld.scan.study_id]))
    text = pdf_text(response.content)
    assert "Not analysed: not a breast ultrasound image." in text
    assert f"{MESSAGE} (gate score 9.75)" in text
    _no_verdict(text)


def test_no_file_of_a_withheld_analysis_can_be_downloaded(
    client, radiologist, withheld
):
    client.force_login(radiologist)
    for kind in ("mask", "overlay", "gradcam", "seg_gradcam", "gradcam_map"):
        url = reverse("analyses:artifact", args=[withheld.pk, kind])
        assert client.get(url).status_code == 404, kind
    outline = reverse("review:analysis_outline", args=[withheld.pk])
    assert client.get(outline).status_code == 404


def test_the_dicom_sr_says_why_and_there_is_no_seg_or_outline(
    client, radiologist, withheld
):
    import zipfile

    import pydicom

    client.force_login(radiologist)
    for kind in ("seg", "overlay"):
        response = client.get(
            reverse("dicomnet:analysis_dicom", args=[withheld.pk, kind])
        )
        assert response.status_code == 404, kind
    response = client.get(reverse("dicomnet:analysis_dicom", args=[withheld.pk, "sr"]))
    assert response.status_code == 200
    sr = pydicom.dcmread(io.BytesIO(response.content))
    text = str(sr)
    assert "Not analysed: not a breast ultrasound image" in text
    assert "Ultrasound gate score" in text and "9.75" in text
    for absent in ("Malignant", "Benign", "Probability", "Segmentation"):
        assert absent not in text, absent
    # Only the SR references the source image: there is no SEG to reference.
    assert (
        len(sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence)
        == 1
    )
    archive = client.get(
        reverse("dicomnet:analysis_dicom", args=[withheld.pk, "zip"])
    ).content
    names = zipfile.ZipFile(io.BytesIO(archive)).namelist()
    assert sorted(names) == [
        f"analysis-{withheld.pk}-source.dcm",
        f"analysis-{withheld.pk}-sr.dcm",
    ]


def test_a_withheld_scan_cannot_be_agreed_with(radiologist, withheld):
    from django.core.exceptions import ValidationError

    from portal.review.services import review_save

    with pytest.raises(ValidationError, match="gave no label"):
        review_save(
            analysis=withheld,
            author=radiologist,
            agrees_with_model=True,
            label="",
            birads="1",
        )
    review = review_save(
        analysis=withheld,
        author=radiologist,
        agrees_with_model=False,
        label="normal",
        birads="1",
        sign=True,
    )
    assert review.label == "normal"


def test_the_withheld_sr_passes_dciodvfy(withheld, tmp_path):
    from portal.dicomnet.results import analysis_results
    from tests.portal.dicomnet.test_results_conformance import (
        DCIODVFY,
        dciodvfy_errors,
    )

    if DCIODVFY is None:
        pytest.skip("dicom3tools' dciodvfy is not installed")
    results = analysis_results(analysis=withheld)
    assert set(results.names) == {"sr", "source"}
    for kind, dataset in results.names.items():
        assert dciodvfy_errors(dataset, tmp_path / f"{kind}.dcm") == [], kind


def test_a_withheld_image_counts_for_no_study_malignancy_and_no_worklist_rank(
    client, radiologist, study, user, make_analysed_scan
):
    """The worklist (issue 19/20) ranks a study by its most suspicious unsigned image and
    shows the study's malignancy: an image withheld as not a breast ultrasound is in
    neither, even where it was analysed before with a high malignant p (the latest
    result counts), and it raises no "unusual for this model" marker on the row."""
    from portal.analyses import services
    from portal.analyses.selectors import study_malignancies
    from portal.clinical.models import Study

    other = make_analysed_scan(
        study,
        user,
        probabilities={"normal": 0.5, "benign": 0.3, "malignant": 0.2},
        filename="other.png",
    )
    earlier = make_analysed_scan(
        study,
        user,
        probabilities={"normal": 0.01, "benign": 0.02, "malignant": 0.97},
        filename="photo.png",
        model_version="older-model",  # analysed again below by the gated model
    )
    again = Analysis.objects.create(
        scan=earlier, model_version=TEST_MODEL_VERSION, status=Analysis.Status.QUEUED
    )
    services.analysis_claim(analysis_id=again.pk, worker="test-worker")
    assert services.analysis_record_success(
        analysis_id=again.pk,
        result={
            **VERDICT,
            "withheld": True,
            "gate_score": 9.75,
            "in_distribution": False,
            "ood_score": 50.0,
        },
        artifacts=verdict_artifacts(48, 64),
    )
    result = study_malignancies(study_ids=[study.pk])[study.pk]
    assert (result.scan_id, result.images) == (other.pk, 1)
    assert result.malignant == pytest.approx(0.2)
    study = Study.objects.get(pk=study.pk)
    assert study.awaiting_review and study.max_malignant == pytest.approx(0.2)
    client.force_login(radiologist)
    rows = client.get(reverse("review:worklist")).content.decode()
    rows = rows.split('id="worklist-rows"')[1]
    assert "20.0%" in rows
    assert "97.0%" not in rows and "87.7%" not in rows
    assert "unusual for this model" not in rows
