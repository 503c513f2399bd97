"""Analysed scans with stored artifacts, and users in each role."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from django.core.files.base import ContentFile
from PIL import Image

from tests.conftest import TEST_MODEL_VERSION

# Analysis fields of a result flagged out of distribution (its score above its model's
# threshold), with the class its Grad-CAM explains: analysed_scan(..., **FLAGGED).
FLAGGED = {
    "in_distribution": False,
    "ood_score": 97.25,
    "ood_threshold": 41.5,
    "explained_class": "malignant",
}


# A verdict no page may show of a withheld scan: a distinctive malignant probability.
VERDICT = {
    "label": "malignant",
    "probabilities": {"normal": 0.0412, "benign": 0.0823, "malignant": 0.8765},
    "confidence": 0.8765,
    "lesion_area_fraction": 0.1234,
    "bbox": [20, 10, 40, 30],
    "explained_class": "malignant",
    "logits": [-1.5, -0.25, 2.75],
}


def verdict_artifacts(height: int, width: int) -> dict[str, bytes]:
    """The files a worker hands over with a verdict: a lesion mask and two heat maps."""
    from ml.render import heatmap_png, mask_png

    mask = np.zeros((height, width), bool)
    mask[10:30, 20:40] = True
    heat = np.ones((16, 16), np.float32)
    return {
        "mask": mask_png(mask),
        "gradcam_map": heatmap_png(heat),
        "seg_gradcam_map": heatmap_png(heat),
    }


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def analysed_scan(
    study: Any,
    uploaded_by: Any,
    *,
    probabilities: dict[str, float] | None = None,
    model_version: str = TEST_MODEL_VERSION,
    filename: str = "scan.png",
    legacy: bool = False,
    **analysis_fields: Any,
) -> Any:
    """A scan with a succeeded analysis and its stored results: what a worker stores now
    (a 1-bit mask and grey heatmaps), or with ``legacy`` what workers stored before (an
    8-bit mask and the three pictures drawn on the scan). analysis_fields set more of the
    analysis (in_distribution=False, ood_score=..., ...). The study's worklist columns
    are refreshed as the worker's analysis_record_success does."""
    from ml.render import display_png, heatmap_png, mask_png
    from portal.analyses.models import Analysis
    from portal.clinical.models import Scan
    from portal.review.services import study_review_refresh

    probabilities = probabilities or {"normal": 0.1, "benign": 0.2, "malignant": 0.7}
    width, height = 64, 48
    scan = Scan(
        study=study,
        original_filename=filename,
        sha256="0" * 64,
        width=width,
        height=height,
        format="PNG",
        uploaded_by=uploaded_by,
    )
    pixels = np.full((height, width, 3), 90, np.uint8)
    scan.original.save("original.png", ContentFile(_png(pixels)), save=False)
    if not legacy:
        scan.display.save("display.png", ContentFile(display_png(pixels)), save=False)
    scan.save()
    mask = np.zeros((height, width), np.uint8)
    mask[10:30, 20:40] = 255
    label = max(probabilities, key=probabilities.get)
    analysis = Analysis(
        scan=scan,
        model_version=model_version,
        status=Analysis.Status.SUCCEEDED,
        label=label,
        confidence=probabilities[label],
        probabilities=probabilities,
        lesion_area_fraction=float((mask > 0).mean()),
        bbox=[20, 10, 40, 30],
        **analysis_fields,
    )
    if not legacy:
        heat = np.zeros((16, 16), np.float32)
        heat[4:8, 5:10] = 1.0
        analysis.mask.save("mask.png", ContentFile(mask_png(mask > 0)), save=False)
        analysis.gradcam_map.save(
            "gradcam_map.png", ContentFile(heatmap_png(heat)), save=False
        )
        analysis.seg_gradcam_map.save(
            "seg_gradcam_map.png", ContentFile(heatmap_png(heat.T.copy())), save=False
        )
        analysis.save()
        study_review_refresh(study_id=study.pk)
        return scan
    analysis.mask.save("mask.png", ContentFile(_png(mask)), save=False)
    overlay = pixels.copy()
    overlay[10, 20:40] = (255, 220, 0)
    analysis.overlay.save("overlay.png", ContentFile(_png(overlay)), save=False)
    heat = pixels.copy()
    heat[..., 0] = 200
    analysis.gradcam.save("gradcam.png", ContentFile(_png(heat)), save=False)
    analysis.seg_gradcam.save("seg_gradcam.png", ContentFile(_png(heat)), save=False)
    analysis.save()
    study_review_refresh(study_id=study.pk)
    return scan


def withheld_scan(
    study: Any,
    uploaded_by: Any,
    *,
    filename: str = "photo.png",
    gate_score: float = 9.75,
) -> Any:
    """A scan the gate withheld (not a breast ultrasound), recorded as a worker records
    it: the model's full verdict and files handed to analysis_record_success, which
    keeps none of them."""
    from portal.analyses.models import Analysis
    from tests.results import record_result

    scan = analysed_scan(study, uploaded_by, filename=filename, legacy=False)
    scan.analyses.all().delete()
    analysis = Analysis.objects.create(
        scan=scan, model_version=TEST_MODEL_VERSION, status=Analysis.Status.QUEUED
    )
    assert record_result(
        analysis,
        artifacts=verdict_artifacts(scan.height, scan.width),
        withheld=True,
        gate_score=gate_score,
        in_distribution=False,
        ood_score=50.0,
        **VERDICT,
    )
    return scan


@pytest.fixture
def make_analysed_scan():
    return analysed_scan


@pytest.fixture
def radiologist(make_user: Any) -> Any:
    return make_user("radiologist", "dr-reader")


@pytest.fixture
def administrator(make_user: Any) -> Any:
    return make_user("administrator", "it-admin")


@pytest.fixture
def scan(study: Any, user: Any) -> Any:
    return analysed_scan(study, user)


@pytest.fixture
def analysis(scan: Any) -> Any:
    return scan.analyses.get()


# --- site calibration: a model.json with a known calibration, and signed reads ---------

# The calibration model.json's own calibration and the class prior training recorded.
TEMPERATURE, CLASS_BIAS = 1.25, [0.75, 0.0, 1.0]
TRAINING_PRIOR = [0.2, 0.5, 0.3]
LABELS = ("normal", "benign", "malignant")


@pytest.fixture
def calibration_model_fields() -> dict[str, Any]:
    """More model.json fields for calibration_model; a test module overrides this
    fixture (the scanner tests give the model an out-of-distribution threshold)."""
    return {}


@pytest.fixture
def calibration_model(
    weights_dir: Any, calibration_model_fields: dict[str, Any]
) -> Any:
    """A whole model.json (read_meta refuses a partial one) with TEMPERATURE and
    CLASS_BIAS, and the class prior where training records it. The calibration tests
    use it for every test: pytestmark = pytest.mark.usefixtures("calibration_model")."""
    from ml.weights_io import placeholder_meta, write_meta

    return write_meta(
        weights_dir,
        placeholder_meta(
            TEST_MODEL_VERSION,
            temperature=TEMPERATURE,
            class_bias=CLASS_BIAS,
            training={"class_prior": TRAINING_PRIOR},
            **calibration_model_fields,
        ),
    )


def own_calibration() -> Any:
    """The calibration model.json's own calibration, as ml's object."""
    from ml.site_calibration import SiteCalibration as Fitted

    return Fitted.from_training(temperature=TEMPERATURE, class_bias=CLASS_BIAS)


def site_logits(n: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """A site whose scanner pulls the malignant logit down: the training calibration
    under-calls malignant there, which a site calibration can correct."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, size=n, p=[0.3, 0.4, 0.3])
    logits = np.eye(3)[labels] * 2.5 + rng.normal(0, 1.0, (n, 3))
    logits[:, 2] -= 1.5
    return logits, labels


def signed_analyses(
    user: Any, *, n: int, signed: bool, seed: int = 7, pathology: str = ""
) -> list[Any]:
    """n scans (two per patient) with succeeded analyses shown through the model's own
    calibration, each with stored logits; with `signed`, a signed reading per scan
    carrying the true label. Rows made in bulk: the fit needs a hundred or more."""
    from django.utils import timezone

    from portal.analyses.models import Analysis
    from portal.clinical.models import Patient, Scan, Study
    from portal.review.models import Review

    logits, labels = site_logits(n, seed)
    shown = own_calibration().probabilities(logits)
    tag = f"s{seed}-{n}"
    patients = Patient.objects.bulk_create(
        Patient(identifier=f"{tag}-p{i}", name=f"Patient {i}")
        for i in range((n + 1) // 2)
    )
    studies = Study.objects.bulk_create(
        Study(patient=p, created_by=user, pathology=pathology) for p in patients
    )
    scans = Scan.objects.bulk_create(
        Scan(
            study=studies[i // 2],
            original=f"scans/{tag}-{i}.png",
            original_filename=f"{tag}-{i}.png",
            sha256=f"{i:064d}",
            width=64,
            height=48,
            format="PNG",
            uploaded_by=user,
        )
        for i in range(n)
    )
    analyses = Analysis.objects.bulk_create(
        Analysis(
            scan=scan,
            model_version=TEST_MODEL_VERSION,
            status=Analysis.Status.SUCCEEDED,
            label=LABELS[int(shown[i].argmax())],
            confidence=float(shown[i].max()),
            probabilities=dict(zip(LABELS, map(float, shown[i]), strict=True)),
            lesion_area_fraction=0.1,
            logits=[float(v) for v in logits[i]],
            suspicious=bool(shown[i].argmax() == 2),
        )
        for i, scan in enumerate(scans)
    )
    if signed:
        now = timezone.now()
        Review.objects.bulk_create(
            Review(
                scan=a.scan,
                analysis=a,
                agrees_with_model=a.label == LABELS[labels[i]],
                label=LABELS[labels[i]],
                birads="3",
                author=user,
                signed_at=now,
            )
            for i, a in enumerate(analyses)
        )
    return analyses
