"""Site calibration from the site's own signed reads: fit (cross-validated before/after),
activate (re-scores history from stored logits, audited, versioned), roll back; new
results shown through the active one; the biopsy outcome ahead of the signed label;
the operating point driving the suspicious flag and the worklist; the case-mix check;
and who may do what."""

from __future__ import annotations

import json

import numpy as np
import pytest
from auditlog.models import LogEntry
from django.core.exceptions import ValidationError
from django.urls import reverse

from ml.site_calibration import MIN_READS_FOR_SITE_CALIBRATION
from ml.site_calibration import SiteCalibration as Fitted
from ml.weights_io import placeholder_meta, write_meta
from portal.analyses.models import Analysis
from portal.clinical.models import Study
from portal.registry.models import CalibrationActivation, SiteCalibration
from portal.registry.selectors import site_calibration_active
from portal.review import calibration as site_calibration
from portal.review.models import Review
from tests.conftest import TEST_MODEL_VERSION
from tests.portal.review.conftest import (
    LABELS,
    TRAINING_PRIOR,
    own_calibration,
    signed_analyses,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("calibration_model")]


@pytest.fixture
def reads(user) -> list[Analysis]:
    return signed_analyses(user, n=MIN_READS_FOR_SITE_CALIBRATION + 20, signed=True)


@pytest.fixture
def fitted(reads, administrator) -> SiteCalibration:
    return site_calibration.site_calibration_fit(
        model_version=TEST_MODEL_VERSION,
        target_sensitivity=0.9,
        created_by=administrator,
    )


def test_a_fit_needs_enough_signed_reads(user, administrator):
    signed_analyses(user, n=30, signed=True)
    with pytest.raises(
        ValidationError, match=f"at least {MIN_READS_FOR_SITE_CALIBRATION}"
    ):
        site_calibration.site_calibration_fit(
            model_version=TEST_MODEL_VERSION,
            target_sensitivity=0.9,
            created_by=administrator,
        )
    assert not SiteCalibration.objects.exists()


def test_a_fit_is_recorded_as_a_version_with_cross_validated_before_and_after(
    fitted, reads
):
    n = MIN_READS_FOR_SITE_CALIBRATION + 20
    assert (fitted.version, fitted.reads, fitted.target_sensitivity) == (1, n, 0.9)
    evaluation = fitted.evaluation
    assert evaluation["n"] == n and evaluation["groups"] == n // 2
    for side in ("before", "after"):
        assert 0 <= evaluation[side]["ece"] <= 1
        assert len(evaluation[side]["intervals"]["ece"]) == 2
        assert len(evaluation[side]["reliability"]) == 10
    # This site's scanner pulls malignant down: its own calibration is better
    # calibrated out of fold than the training one it was compared with.
    assert evaluation["after"]["ece"] < evaluation["before"]["ece"]
    assert evaluation["baseline"] == own_calibration().calibration_id
    assert fitted.threshold is not None
    # The record is ml's calibration, whole and unaltered.
    assert Fitted.from_dict(fitted.parameters).threshold == fitted.threshold
    # Fitting changes nothing shown: it is not active yet.
    assert site_calibration_active(model_version=TEST_MODEL_VERSION) is None
    first = Analysis.objects.get(pk=reads[0].pk)
    assert first.calibration is None and first.probabilities == reads[0].probabilities


def test_activating_rescores_history_from_stored_logits_with_audit_rows(
    fitted, reads, administrator, user
):
    withheld = Analysis.objects.get(pk=reads[1].pk)
    withheld.withheld, withheld.label, withheld.probabilities = True, "", None
    withheld.save()
    no_logits = Analysis.objects.get(pk=reads[2].pk)
    no_logits.logits = None
    no_logits.save()
    before = {a.pk: a.probabilities for a in reads}

    activation = site_calibration.site_calibration_activate(
        calibration=fitted, user=administrator
    )

    assert site_calibration_active(model_version=TEST_MODEL_VERSION) == fitted
    assert activation.rescored == len(reads) - 2
    applied = Fitted.from_dict(fitted.parameters)
    analysis = Analysis.objects.get(pk=reads[0].pk)
    expected = applied.probabilities(np.asarray([reads[0].logits]))[0]
    assert analysis.calibration == fitted
    assert analysis.probabilities == pytest.approx(
        dict(zip(LABELS, expected, strict=True))
    )
    assert analysis.label == LABELS[int(expected.argmax())]
    assert analysis.suspicious == bool(expected[2] >= fitted.threshold)
    assert analysis.operating_threshold == fitted.threshold
    # The values shown before stay in the audit trail.
    entry = LogEntry.objects.get_for_object(analysis).latest("timestamp")
    old, _new = entry.changes_dict["probabilities"]
    assert json.loads(old.replace("'", '"')) == pytest.approx(before[reads[0].pk])
    # Untouched: the withheld row and the row analysed before logits were kept.
    assert Analysis.objects.get(pk=withheld.pk).calibration is None
    assert Analysis.objects.get(pk=no_logits.pk).probabilities == before[no_logits.pk]
    # The activation itself is a row of its own, audited.
    entries = LogEntry.objects.get_for_object(activation)
    assert entries.filter(action=LogEntry.Action.CREATE).count() == 1
    with pytest.raises(ValidationError, match="already the active one"):
        site_calibration.site_calibration_activate(
            calibration=fitted, user=administrator
        )


def test_a_new_result_is_shown_through_the_active_calibration(
    fitted, administrator, study, user, make_png
):
    from portal.analyses.services import scan_submit
    from portal.clinical.uploads import validate_content
    from tests.results import record_result

    site_calibration.site_calibration_activate(calibration=fitted, user=administrator)
    upload = validate_content(filename="new.png", content=make_png())
    scan = scan_submit(
        study=study, upload=upload, uploaded_by=user, model_version=TEST_MODEL_VERSION
    )
    analysis = scan.analyses.get()
    logits = [0.1, 0.4, 0.9]
    record_result(analysis, logits=logits)
    analysis.refresh_from_db()
    expected = Fitted.from_dict(fitted.parameters).probabilities(np.asarray([logits]))[
        0
    ]
    assert analysis.calibration == fitted
    assert analysis.probabilities["malignant"] == pytest.approx(expected[2])
    assert analysis.suspicious == bool(expected[2] >= fitted.threshold)


def test_rollback_returns_to_the_calibration_before_and_rescores_again(
    fitted, reads, administrator
):
    with pytest.raises(ValidationError, match="nothing to roll back"):
        site_calibration.site_calibration_rollback(
            model_version=TEST_MODEL_VERSION, user=administrator
        )
    original = reads[0].probabilities
    site_calibration.site_calibration_activate(calibration=fitted, user=administrator)
    rollback = site_calibration.site_calibration_rollback(
        model_version=TEST_MODEL_VERSION, user=administrator
    )
    assert rollback.calibration is None and rollback.reason == "rolled back"
    assert site_calibration_active(model_version=TEST_MODEL_VERSION) is None
    analysis = Analysis.objects.get(pk=reads[0].pk)
    assert analysis.calibration is None and analysis.operating_threshold is None
    assert analysis.probabilities == pytest.approx(original)
    assert analysis.suspicious == (analysis.label == "malignant")
    assert CalibrationActivation.objects.count() == 2
    # Each re-scoring left its change record: the fitted values are in the trail too.
    assert LogEntry.objects.get_for_object(analysis).count() == 2


def test_a_second_fit_is_the_next_version_and_rollback_returns_to_the_first(
    fitted, administrator
):
    second = site_calibration.site_calibration_fit(
        model_version=TEST_MODEL_VERSION,
        target_sensitivity=0.95,
        created_by=administrator,
    )
    assert second.version == 2
    site_calibration.site_calibration_activate(calibration=fitted, user=administrator)
    site_calibration.site_calibration_activate(calibration=second, user=administrator)
    site_calibration.site_calibration_rollback(
        model_version=TEST_MODEL_VERSION, user=administrator
    )
    assert site_calibration_active(model_version=TEST_MODEL_VERSION) == fitted


def test_the_biopsy_outcome_takes_precedence_over_the_signed_label(user, radiologist):
    from portal.clinical.services import study_record_pathology

    analyses = signed_analyses(user, n=4, signed=True)
    study = analyses[0].scan.study
    review = Review.objects.get(analysis=analyses[0])
    review.label = "benign"
    review.save()
    study_record_pathology(study=study, outcome="malignant", entered_by=radiologist)
    reads = site_calibration.signed_reads(model_version=TEST_MODEL_VERSION)
    assert reads.n == 4 and reads.from_pathology == 2  # both scans of the study
    first = list(reads.logits[:, 0]).index(analyses[0].logits[0])
    assert LABELS[reads.labels[first]] == "malignant"
    study.refresh_from_db()
    assert (study.pathology, study.pathology_entered_by) == ("malignant", radiologist)
    entry = LogEntry.objects.get_for_object(study).latest("timestamp")
    assert entry.changes_dict["pathology"] == ["", "malignant"]
    with pytest.raises(ValidationError, match="not a pathology outcome"):
        study_record_pathology(study=study, outcome="normal", entered_by=radiologist)


def test_suspicious_studies_lead_the_worklist(
    client, radiologist, study, user, make_analysed_scan
):
    from portal.review.selectors import worklist

    make_analysed_scan(
        study,
        user,
        probabilities={"normal": 0.05, "benign": 0.5, "malignant": 0.45},
        suspicious=False,
    )
    other = Study.objects.create(patient=study.patient, created_by=user)
    make_analysed_scan(
        other,
        user,
        probabilities={"normal": 0.35, "benign": 0.25, "malignant": 0.40},
        suspicious=True,
        filename="b.png",
    )
    assert [s.pk for s in worklist()] == [other.pk, study.pk]
    client.force_login(radiologist)
    rows = client.get(reverse("review:worklist")).content.decode()
    rows = rows.split('id="worklist-rows"')[1]
    assert rows.count('<span class="badge suspicious">suspicious</span>') == 1
    assert rows.index("40.0%") < rows.index("45.0%")  # formats.percent_text


def _bayes_model_json(weights_dir) -> None:
    """A model whose own calibration gives the exact posteriors, under the training
    prior, of logits drawn as 3 * onehot(class) + N(0, 0.5^2): temperature 0.5^2 / 3
    and offsets T * log(prior). EM's estimate then converges on the site's prior."""
    temperature = 0.25 / 3
    # A whole model.json (read_meta refuses a partial one); the class prior where
    # training records it.
    write_meta(
        weights_dir,
        placeholder_meta(
            TEST_MODEL_VERSION,
            temperature=temperature,
            class_bias=[temperature * np.log(p) for p in TRAINING_PRIOR],
            training={"class_prior": TRAINING_PRIOR},
        ),
    )


def _site_like(prior: list[float], n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, size=n, p=prior)
    return np.eye(3)[labels] * 3.0 + rng.normal(0, 0.5, (n, 3))


def test_the_case_mix_check_estimates_the_site_prevalence_and_warns(user, weights_dir):
    # A site where most lesions are malignant: its analyses' posteriors say so.
    _bayes_model_json(weights_dir)
    logits = _site_like([0.05, 0.15, 0.8], 200, seed=3)
    analyses = signed_analyses(user, n=200, signed=False, seed=11)
    for analysis, row in zip(analyses, logits, strict=True):
        analysis.logits = [float(v) for v in row]
    Analysis.objects.bulk_update(analyses, ["logits"])
    mix = site_calibration.case_mix(model_version=TEST_MODEL_VERSION)
    assert mix.analyses == 200
    assert mix.training_malignant == pytest.approx(0.3)
    assert mix.site_malignant == pytest.approx(0.8, abs=0.07) and mix.warning


def test_the_case_mix_check_does_not_warn_on_a_site_like_training(user, weights_dir):
    _bayes_model_json(weights_dir)
    logits = _site_like(TRAINING_PRIOR, 300, seed=5)
    analyses = signed_analyses(user, n=300, signed=False, seed=13)
    for analysis, row in zip(analyses, logits, strict=True):
        analysis.logits = [float(v) for v in row]
    Analysis.objects.bulk_update(analyses, ["logits"])
    mix = site_calibration.case_mix(model_version=TEST_MODEL_VERSION)
    assert mix.site_malignant == pytest.approx(0.3, abs=0.06)
    assert not mix.warning


@pytest.mark.django_db(transaction=True)
def test_a_result_stored_while_a_calibration_is_activated_is_rescored_too(
    study, user, administrator, make_png
):
    """A worker storing a result holds its row; the activation waits for it and then
    re-scores it, instead of missing a row it could not yet see as finished."""
    import threading

    from django.db import connection

    from portal.analyses import services
    from portal.analyses.signals import results_recorded
    from portal.clinical.uploads import validate_content
    from portal.registry.services import site_calibration_create

    calibration = site_calibration_create(
        model_version=TEST_MODEL_VERSION,
        parameters=Fitted(
            temperature=2.0,
            offsets=(0.0, 0.0, 1.0),
            threshold=0.2,
            target_sensitivity=0.9,
            n=120,
        ).to_dict(),
        evaluation={},
        target_sensitivity=0.9,
        reads=120,
        created_by=administrator,
    )
    upload = validate_content(filename="racing.png", content=make_png())
    scan = services.scan_submit(
        study=study, upload=upload, uploaded_by=user, model_version=TEST_MODEL_VERSION
    )
    analysis = scan.analyses.get()
    services.analysis_claim(analysis_id=analysis.pk, worker="racing-worker")
    logits = [0.2, 0.1, 0.6]
    stored, go = threading.Event(), threading.Event()

    def hold(sender, **kwargs):  # inside the worker's transaction, before its commit
        if threading.current_thread().name == "worker":
            stored.set()
            go.wait(30)

    def worker() -> None:
        try:
            services.analysis_record_success(
                analysis_id=analysis.pk,
                result={
                    "label": "malignant",
                    "probabilities": {"normal": 0.3, "benign": 0.2, "malignant": 0.5},
                    "confidence": 0.5,
                    "lesion_area_fraction": 0.0,
                    "bbox": None,
                    "logits": logits,
                },
                artifacts={},
            )
        finally:
            connection.close()

    def activate() -> None:
        try:
            site_calibration.site_calibration_activate(
                calibration=calibration, user=administrator
            )
        finally:
            connection.close()

    results_recorded.connect(hold, weak=False)
    try:
        storing = threading.Thread(target=worker, name="worker")
        storing.start()
        assert stored.wait(30)
        activating = threading.Thread(target=activate, name="activation")
        activating.start()
        activating.join(2)
        assert activating.is_alive(), "the activation did not wait for the stored row"
        go.set()
        storing.join(30)
        activating.join(60)
    finally:
        go.set()
        results_recorded.disconnect(hold)
    analysis.refresh_from_db()
    expected = Fitted.from_dict(calibration.parameters).probabilities(
        np.asarray([logits])
    )[0]
    assert analysis.calibration_id == calibration.pk
    assert analysis.probabilities["malignant"] == pytest.approx(expected[2])
    assert CalibrationActivation.objects.get().rescored == 1
