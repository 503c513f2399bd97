from __future__ import annotations

import numpy as np
import pytest

from ml import metrics


def test_dice_scores_overlap_and_treats_two_empty_masks_as_agreement():
    truth = np.zeros((3, 4, 4), bool)
    predicted = np.zeros((3, 4, 4), bool)
    truth[0, :2], predicted[0, :1] = True, True  # 8 vs 4 pixels, 4 shared
    truth[1, :2] = True  # missed entirely
    assert metrics.dice_per_image(truth, predicted).tolist() == pytest.approx(
        [2 * 4 / 12, 0.0, 1.0]
    )


def test_ece_is_zero_for_perfectly_calibrated_confidence_and_large_for_overconfidence():
    labels = np.array([0] * 8 + [1] * 2)
    honest = np.tile([0.8, 0.2, 0.0], (10, 1))
    assert metrics.expected_calibration_error(labels, honest) == pytest.approx(
        0.0, abs=1e-9
    )
    overconfident = np.tile([1.0, 0.0, 0.0], (10, 1))
    assert metrics.expected_calibration_error(labels, overconfident) == pytest.approx(
        0.2
    )


def test_temperature_scaling_softens_overconfident_logits():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 400)
    logits = rng.normal(size=(400, 3))
    logits[np.arange(400), labels] += 1.0
    logits *= 5  # overconfident
    temperature = metrics.fit_temperature(logits, labels)
    assert temperature > 2
    before = metrics.expected_calibration_error(labels, metrics.softmax(logits))
    after = metrics.expected_calibration_error(
        labels, metrics.softmax(logits, temperature)
    )
    assert after < before


def test_class_bias_recovers_a_starved_class():
    labels = np.array([0] * 10 + [1] * 10 + [2] * 10)
    logits = np.zeros((30, 3))
    logits[np.arange(30), labels] = 1.0
    logits[:10, 1] = 1.5  # every normal looks benign, by a margin of 0.5
    assert metrics.recalls(labels, logits.argmax(1))[0] == 0.0
    bias = metrics.fit_class_bias(logits, labels)
    assert bias[1] == 0.0 and 0.5 <= bias[0] < 1.0
    assert metrics.recalls(labels, (logits + bias).argmax(1)).tolist() == [
        1.0,
        1.0,
        1.0,
    ]


def test_bootstrap_intervals_bracket_the_point_estimate():
    values = np.random.default_rng(1).normal(size=200)
    intervals = metrics.bootstrap_intervals(
        lambda idx: {"mean": float(values[idx].mean())}, np.arange(200), rounds=300
    )
    low, high = intervals["mean"]
    assert low < values.mean() < high


def test_resampling_whole_patients_widens_intervals_when_their_images_agree():
    rng = np.random.default_rng(2)
    # 20 patients with 10 near-identical images each: 20 pieces of evidence, not 200.
    patient_means = rng.normal(size=20)
    values = np.repeat(patient_means, 10) + rng.normal(scale=0.01, size=200)
    patients = np.repeat(np.arange(20), 10)

    def width(groups):
        low, high = metrics.bootstrap_intervals(
            lambda idx: {"mean": float(values[idx].mean())}, groups, rounds=400
        )["mean"]
        return high - low

    assert width(patients) > 2.5 * width(np.arange(200))


def test_balanced_recall_offsets_match_the_objective_loop():
    """fit_class_bias scores the default objective a grid row at once; the same scores as
    passing balanced recall as ``objective`` (the loop), so the same offsets and ties."""
    import numpy as np

    from ml import metrics

    for seed in range(20):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(5, 300))
        logits = rng.normal(size=(n, 3)) * rng.uniform(0.5, 4)
        labels = rng.integers(0, 3, n)
        if seed % 5 == 0:
            labels[labels == 0] = 1  # a class absent
        for grid in (None, np.arange(-2.0, 4.01, 0.25)):
            fast = metrics.fit_class_bias(logits, labels, grid=grid)
            loop = metrics.fit_class_bias(
                logits,
                labels,
                grid=grid,
                objective=lambda p, y=labels: float(np.nanmean(metrics.recalls(y, p))),
            )
            np.testing.assert_array_equal(fast, loop)
