"""ml.site_calibration: a site's calibration and operating point, on simulated sites whose
true posteriors are known (class-conditional Gaussians), so every check can fail."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from ml import metrics
from ml.config import CLASSES
from ml.metrics import fit_bias_and_temperature, fit_class_bias
from ml.site_calibration import (
    DECISION_GRID,
    PRIOR_STRENGTH,
    PRIOR_STRENGTHS,
    SiteCalibration,
    choose_prior_strength,
    estimate_prior_em,
    evaluate_site_calibration,
    fit_site_calibration,
)
from ml.training.calibration import calibrate

MALIGNANT = CLASSES.index("malignant")
MEANS = np.array([[0.0, 0.0], [2.0, 0.0], [1.0, 2.0]])


def true_logits(x: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """log prior + log likelihood: softmax of these is the Bayes posterior."""
    squared = ((x[:, None, :] - MEANS[None]) ** 2).sum(-1)
    return np.log(prior)[None] - 0.5 * squared


def simulate_site(
    n: int, prior, *, seed: int, scale: float = 3.0, shift=(1.0, 0.0, -1.5)
):
    """A site: labels drawn from ``prior``; the 'network' is over-confident (``scale``) and
    biased (``shift``) relative to the true posterior under that prior."""
    rng = np.random.default_rng(seed)
    prior = np.asarray(prior, float)
    labels = rng.choice(len(CLASSES), size=n, p=prior)
    x = MEANS[labels] + rng.normal(size=(n, 2))
    truth = true_logits(x, prior)
    return scale * truth + np.asarray(shift), labels, truth


def test_round_trip_and_content_hash():
    calibration = SiteCalibration(
        temperature=1.3,
        offsets=(0.5, 0.0, 1.0),
        threshold=0.25,
        target_sensitivity=0.9,
        n=120,
        fitted_on={"classes": {"normal": 40, "benign": 50, "malignant": 30}},
    )
    payload = json.loads(json.dumps(calibration.to_dict()))
    again = SiteCalibration.from_dict(payload)
    assert again == calibration
    assert again.calibration_id == calibration.calibration_id
    assert calibration.calibration_id.startswith("cal-")
    # Any parameter changes the id; an id that does not match its parameters is refused.
    moved = SiteCalibration.from_dict(
        {**payload, "threshold": 0.3, "calibration_id": ""}
    )
    assert moved.calibration_id != calibration.calibration_id
    with pytest.raises(ValueError, match="altered"):
        SiteCalibration.from_dict({**payload, "threshold": 0.3})


@pytest.mark.parametrize(
    "change, message",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"offsets": [1.0, 2.0]}, "offsets"),
        ({"threshold": 1.5}, "threshold"),
        ({"target_sensitivity": 1.0}, "target_sensitivity"),
        ({"classes": ["benign", "normal", "malignant"]}, "classes"),
        ({"decision_offsets": [0.0, float("nan"), 0.0]}, "decision_offsets"),
    ],
)
def test_bad_calibration_is_refused_clearly(change, message):
    payload = SiteCalibration(
        temperature=1.0, offsets=(0, 0, 0), threshold=None, target_sensitivity=0.9, n=0
    ).to_dict()
    payload.pop("calibration_id")
    with pytest.raises(ValueError, match=message):
        SiteCalibration.from_dict({**payload, **change})


def test_probabilities_follow_the_documented_convention():
    calibration = SiteCalibration(
        temperature=2.0,
        offsets=(0.5, 0.0, -1.0),
        threshold=0.4,
        target_sensitivity=0.9,
        n=1,
    )
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    expected = metrics.softmax(logits + np.array([0.5, 0.0, -1.0]), 2.0)
    np.testing.assert_allclose(calibration.probabilities(logits), expected)
    with pytest.raises(ValueError, match="shape"):
        calibration.probabilities(np.zeros((2, 2)))
    flagged = calibration.suspicious(np.array([[0.2, 0.4, 0.4], [0.5, 0.11, 0.39]]))
    assert flagged.tolist() == [True, False]


def test_without_threshold_suspicious_is_the_malignant_label():
    training = SiteCalibration.from_training(
        temperature=1.2, class_bias=[0.75, 0.0, 1.0]
    )
    assert training.threshold is None and training.n == 0
    probabilities = np.array([[0.1, 0.3, 0.6], [0.2, 0.45, 0.35]])
    assert training.suspicious(probabilities).tolist() == [True, False]


def test_without_threshold_suspicious_follows_the_label_of_its_decision_offsets():
    """A calibration whose label has offsets of its own: without a threshold the flag is
    the label, not the most probable class."""
    calibration = SiteCalibration(
        temperature=1.7,
        offsets=(0.0, 0.0, 0.0),
        decision_offsets=(0.0, 0.0, 1.0),
        threshold=None,
        target_sensitivity=0.9,
        n=100,
    )
    logits = np.array([[0.0, 1.0, 0.5], [0.0, 2.0, 0.5], [3.0, 0.0, 2.5]])
    probabilities = calibration.probabilities(logits)
    assert probabilities.argmax(1).tolist() == [1, 1, 0]
    assert calibration.labels(logits).tolist() == [2, 1, 2]
    assert calibration.suspicious(probabilities).tolist() == [True, False, True]


def test_fit_improves_calibration_and_reaches_the_target_with_the_highest_threshold():
    logits, labels, _truth = simulate_site(600, [0.3, 0.45, 0.25], seed=1)
    fitted = fit_site_calibration(logits, labels, target_sensitivity=0.9)
    raw_ece = metrics.expected_calibration_error(labels, metrics.softmax(logits))
    fitted_ece = metrics.expected_calibration_error(
        labels, fitted.probabilities(logits)
    )
    assert fitted_ece < raw_ece / 2
    # The network is 3x over-confident: the temperature undoes most of it.
    assert 2.0 < fitted.temperature < 4.5
    p_malignant = fitted.probabilities(logits)[labels == MALIGNANT, MALIGNANT]
    assert (p_malignant >= fitted.threshold).mean() >= 0.9
    above = p_malignant[p_malignant > fitted.threshold]
    assert (
        p_malignant >= above.min()
    ).mean() < 0.9  # any higher threshold misses the target
    assert fitted.fitted_on["classes"] == {
        name: int((labels == c).sum()) for c, name in enumerate(CLASSES)
    }
    # The label's rule is the training calibration's (one implementation, on a wider
    # grid); the probabilities are fitted by likelihood (bias-corrected temperature scaling).
    class_bias = fit_class_bias(logits, labels, grid=DECISION_GRID)
    assert tuple(class_bias) == fitted.decision_offsets
    np.testing.assert_array_equal(
        fitted.labels(logits), (logits + class_bias).argmax(1)
    )
    offsets, temperature = fit_bias_and_temperature(logits, labels)
    assert tuple(offsets) == fitted.offsets and temperature == fitted.temperature


def test_a_prior_keeps_few_reads_near_a_calibration_that_fits_and_many_reads_move_it():
    """The site's probabilities as a correction of the model's own calibration: with 60
    reads, a prior that describes the site keeps the fit nearer the truth (lower ECE on
    new cases, every draw's parameters closer) than a fit from nothing; with 3,000 reads a
    wrong prior is overruled by the reads."""
    prior = [0.3, 0.45, 0.25]
    # simulate_site's network: 3 x the true logits + (1, 0, -1.5).
    right = SiteCalibration.from_training(temperature=3.0, class_bias=(-1.0, 0.0, 1.5))
    test_logits, test_labels, _ = simulate_site(4000, prior, seed=20)
    eces = {"prior": [], "none": []}
    for seed in range(21, 29):
        logits, labels, _ = simulate_site(60, prior, seed=seed)
        shrunk = fit_site_calibration(logits, labels, prior=right)
        free = fit_site_calibration(logits, labels)
        assert shrunk.fitted_on["prior"]["calibration"] == right.calibration_id
        assert shrunk.fitted_on["prior"]["strength"] in PRIOR_STRENGTHS
        assert "prior" not in free.fitted_on
        assert abs(np.log(shrunk.temperature / 3.0)) <= abs(
            np.log(free.temperature / 3.0)
        )
        for name, fitted in (("prior", shrunk), ("none", free)):
            eces[name].append(
                metrics.expected_calibration_error(
                    test_labels, fitted.probabilities(test_logits)
                )
            )
    assert np.mean(eces["prior"]) < np.mean(eces["none"])

    wrong = SiteCalibration.from_training(temperature=1.0, class_bias=(0.0, 0.0, 0.0))
    logits, labels, _ = simulate_site(3000, prior, seed=30)
    shrunk = fit_site_calibration(logits, labels, prior=wrong)
    free = fit_site_calibration(logits, labels)
    assert abs(np.log(shrunk.temperature / free.temperature)) < 0.05
    np.testing.assert_allclose(shrunk.offsets, free.offsets, atol=0.1)
    assert shrunk.calibration_id != free.calibration_id


def test_the_sites_reads_choose_how_strong_the_prior_is():
    """A prior that describes the site is held to (a strong prior wins the cross-validation);
    one that does not is let go (a weak one wins); too few patients keep the default."""
    prior = [0.3, 0.45, 0.25]
    right = SiteCalibration.from_training(temperature=3.0, class_bias=(-1.0, 0.0, 1.5))
    wrong = SiteCalibration.from_training(temperature=1.0, class_bias=(1.5, 0.0, -1.0))
    logits, labels, _ = simulate_site(200, prior, seed=40)
    groups = np.arange(200) // 2

    strong, held_out = choose_prior_strength(logits, labels, right, groups=groups)
    weak, _ = choose_prior_strength(logits, labels, wrong, groups=groups)
    assert strong >= 10.0 and weak <= 1.0
    assert set(held_out) == set(PRIOR_STRENGTHS)

    fitted = fit_site_calibration(logits, labels, groups=groups, prior=wrong)
    assert fitted.fitted_on["prior"]["strength"] == weak
    assert (
        fitted.fitted_on["prior"]["chosen_by"]
        == "chosen by 5-fold cross-validation by patient"
    )
    given = fit_site_calibration(logits, labels, prior=wrong, prior_strength=10.0)
    assert given.fitted_on["prior"]["strength"] == 10.0
    assert given.fitted_on["prior"]["chosen_by"] == "given"

    few = fit_site_calibration(logits[:8], labels[:8], groups=np.zeros(8), prior=right)
    assert few.fitted_on["prior"]["strength"] == PRIOR_STRENGTH
    assert few.fitted_on["prior"]["chosen_by"].startswith(
        "the default: too few patients"
    )


def test_probabilities_follow_the_sites_case_mix_and_the_label_weighs_classes_alike():
    """A site with few normals: version 1's offsets (balanced recall) calibrate the
    probabilities to a uniform prior, which no temperature undoes; version 2's follow the
    site's prior (closer to the true posterior, lower ECE), while its label keeps the
    balanced-recall rule (every class's recall as version 1's)."""
    prior = [0.1, 0.6, 0.3]
    logits, labels, _truth = simulate_site(4000, prior, seed=5)
    test_logits, test_labels, test_truth = simulate_site(4000, prior, seed=6)
    fitted = fit_site_calibration(logits, labels)
    old_offsets, old_temperature = calibrate(logits, labels)
    old = metrics.softmax(test_logits + old_offsets, old_temperature)
    new = fitted.probabilities(test_logits)
    true = metrics.softmax(test_truth)
    assert np.abs(new - true).mean() < 0.5 * np.abs(old - true).mean()
    assert metrics.expected_calibration_error(
        test_labels, new
    ) < metrics.expected_calibration_error(test_labels, old)
    balanced = metrics.recalls(test_labels, fitted.labels(test_logits))
    # Labelled by the most probable class instead, the rare normals would be missed more.
    by_probability = metrics.recalls(test_labels, new.argmax(1))
    assert by_probability[0] < balanced[0] - 0.1
    assert np.mean(by_probability) < np.mean(balanced)


def test_decision_offsets_reach_past_the_training_grid_when_a_site_needs_it():
    """A scanner that pushes the normal logits 4.5 further down: the training grid (-1..2)
    stops at its edge; the site's grid (-2..4) recovers the normals."""
    logits, labels, _ = simulate_site(2000, [0.3, 0.45, 0.25], seed=7)
    logits[:, 0] -= 4.5
    test_logits, test_labels, _ = simulate_site(2000, [0.3, 0.45, 0.25], seed=8)
    test_logits[:, 0] -= 4.5
    fitted = fit_site_calibration(logits, labels)
    old_offsets, _ = calibrate(logits, labels)
    assert old_offsets[0] == 2.0 and fitted.decision_offsets[0] > 2.0
    new_recall = metrics.recalls(test_labels, fitted.labels(test_logits))
    old_recall = metrics.recalls(test_labels, (test_logits + old_offsets).argmax(1))
    assert new_recall[0] > old_recall[0] + 0.05
    assert np.mean(new_recall) > np.mean(old_recall)


def test_a_version_1_calibration_loads_unchanged():
    """Stored before decision offsets existed: same id, one set of offsets for both."""
    payload = {
        "version": 1,
        "classes": list(CLASSES),
        "temperature": 1.4,
        "offsets": [0.5, 0.0, 0.75],
        "threshold": 0.3,
        "target_sensitivity": 0.9,
        "n": 120,
        "fitted_on": {},
    }
    first = SiteCalibration.from_dict(payload)
    again = SiteCalibration.from_dict(first.to_dict())
    assert again.calibration_id == first.calibration_id and again.version == 1
    assert "decision_offsets" not in first.to_dict()
    assert first.decision_offsets == first.offsets
    logits = np.array([[0.0, 0.4, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -0.5]])
    assert first.labels(logits).tolist() == [2, 1, 0]
    with pytest.raises(ValueError, match="version 1"):
        SiteCalibration.from_dict({**payload, "decision_offsets": [0.0, 0.0, 0.0]})
    with pytest.raises(ValueError, match="version 3"):
        SiteCalibration.from_dict({**payload, "version": 3})


def test_fit_records_groups_and_scanners_and_leaves_no_threshold_without_malignant_cases():
    logits, labels, _ = simulate_site(200, [0.5, 0.5, 0.0 + 1e-9], seed=2)
    labels = np.where(labels == MALIGNANT, 1, labels)
    fitted = fit_site_calibration(
        logits, labels, groups=np.arange(200) // 2, scanners=["A"] * 150 + ["B"] * 50
    )
    assert fitted.threshold is None
    assert fitted.fitted_on["groups"] == 100
    assert fitted.fitted_on["scanners"] == {"A": 150, "B": 50}


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.array([0, 1, 3]), "0..2"),
        (np.array([0.0, 1.0, 2.0]), "integer"),
        (np.array([0, 1]), "3 labels"),
    ],
)
def test_fit_refuses_bad_labels(labels, message):
    with pytest.raises(ValueError, match=message):
        fit_site_calibration(np.zeros((3, 3)), labels)


def test_evaluation_is_cross_validated_by_patient_and_json_serialisable():
    logits, labels, _ = simulate_site(400, [0.3, 0.45, 0.25], seed=3)
    patients = np.arange(400) // 2
    baseline = SiteCalibration.from_training(
        temperature=1.0, class_bias=[0.0, 0.0, 0.0]
    )
    report = evaluate_site_calibration(
        logits, labels, groups=patients, folds=5, baseline=baseline, bootstrap_rounds=50
    )
    json.dumps(report, allow_nan=False)
    assert report["n"] == 400 and report["groups"] == 200 and report["folds"] == 5
    before, after = report["before"], report["after"]
    assert after["ece"] < before["ece"]
    low, high = after["intervals"]["ece"]
    assert low <= after["ece"] <= high
    # Out-of-fold operating point: near the target, not exactly on it.
    assert 0.8 <= after["sensitivity"] <= 1.0
    assert len(after["reliability"]) == 10
    assert sum(b["count"] for b in after["reliability"]) == 400
    low, high = report["threshold_interval"]
    assert low <= report["threshold"] <= high
    assert (
        report["calibration"]["calibration_id"]
        == SiteCalibration.from_dict(report["calibration"]).calibration_id
    )
    assert report["baseline"] == baseline.calibration_id


def test_group_folds_keep_a_patients_images_together():
    from ml.site_calibration import _group_folds

    groups = np.repeat(np.arange(30), 3)
    folds = _group_folds(groups, 4, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(90))
    for fold in folds:
        others = np.setdiff1d(np.arange(90), fold)
        assert not set(groups[fold]) & set(groups[others])


def test_em_recovers_a_shifted_prior():
    training_prior = np.array([0.3, 0.45, 0.25])
    site_prior = np.array([0.15, 0.35, 0.5])
    _, labels, _ = simulate_site(4000, site_prior, seed=4)
    rng = np.random.default_rng(4)
    x = MEANS[labels] + rng.normal(size=(len(labels), 2))
    # Calibrated posteriors as the model trained under the training prior gives them.
    posteriors = metrics.softmax(true_logits(x, training_prior))
    estimate = estimate_prior_em(posteriors, training_prior)
    naive = posteriors.mean(axis=0)
    assert np.abs(estimate - site_prior).max() < 0.04
    assert np.abs(estimate - site_prior).max() < np.abs(naive - site_prior).max()
    np.testing.assert_allclose(estimate.sum(), 1.0)
    with pytest.raises(ValueError, match="training_prior"):
        estimate_prior_em(posteriors, [0.5, 0.5])


def test_importing_it_loads_neither_tensorflow_nor_sklearn():
    code = (
        "import sys, ml.site_calibration; "
        "print(sorted(m for m in ('tensorflow', 'keras', 'sklearn', 'django') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_the_committed_model_records_the_prior_its_calibration_assumes():
    from ml.config import DEFAULT_WEIGHTS_DIR

    training = json.loads((DEFAULT_WEIGHTS_DIR / "model.json").read_text())["training"]
    prior = training["class_prior"]
    assert list(prior) == list(CLASSES)
    assert all(v > 0 for v in prior.values())
    assert sum(prior.values()) == training["val_images"]


def test_the_sites_own_ood_threshold_is_a_percentile_of_its_scores():
    from ml.site_calibration import site_ood_threshold

    scores = np.arange(1.0, 101.0)
    assert site_ood_threshold(scores, percentile=99.0) == pytest.approx(
        np.percentile(scores, 99.0)
    )
    assert site_ood_threshold([np.nan, 3.0], percentile=50.0) == 3.0
    assert site_ood_threshold([], percentile=99.0) is None
    with pytest.raises(ValueError, match="percentile"):
        site_ood_threshold(scores, percentile=0.0)


@pytest.mark.parametrize(
    ("score", "site", "unusual"),
    [
        (4.0, None, False),  # within the model's threshold: never unusual
        (4.0, 3.0, False),  # the site's threshold never adds a caution
        (6.0, None, True),  # above the model's, no site threshold: unusual
        (6.0, 7.0, False),  # above the model's, within the site's scans: not
        (8.0, 7.0, True),  # above both: unusual
        (None, 7.0, None),  # no score: cannot be judged
    ],
)
def test_unusual_needs_both_thresholds_once_the_site_has_one(score, site, unusual):
    from ml.site_calibration import is_unusual

    assert is_unusual(score, model_threshold=5.0, site_threshold=site) is unusual
    assert is_unusual(6.0, model_threshold=None, site_threshold=site) is None
