"""The site-adaptation curve (ml.training.site_curve) on a simulated site."""

from __future__ import annotations

import numpy as np
import pytest

from ml import metrics
from ml.site_calibration import (
    FORMAT_VERSION,
    PRIOR_STRENGTH,
    PRIOR_STRENGTHS,
    SiteCalibration,
)
from ml.training.site_curve import (
    CAUTION_MULTIPLES,
    PRIOR_CHOICE,
    _draw_by_patient,
    _earlier_caution_fold,
    caution_multiple,
    curve,
    paired,
    site_curve,
)
from ml.training.sources import SOURCES


def test_draws_take_whole_patients():
    groups = np.repeat(np.arange(40), 5)
    rng = np.random.default_rng(0)
    drawn = _draw_by_patient(groups, 23, rng)
    assert len(drawn) == 23
    # Whole patients, except the last one cut at k.
    counts = np.bincount(groups[drawn])
    assert (counts[counts > 0] == 5).sum() >= 4


def test_a_site_calibration_repairs_a_miscalibrated_site():
    rng = np.random.default_rng(1)
    n = 600
    labels = rng.choice(3, n, p=[0.3, 0.45, 0.25])
    truth = rng.normal(size=(n, 3)) + 2.0 * np.eye(3)[labels]
    logits = 4.0 * truth + np.array([3.0, 0.0, -2.0])  # over-confident, shifted
    groups = np.arange(n) // 3
    baseline = SiteCalibration.from_training(temperature=1.0, class_bias=[0, 0, 0])
    rows = curve(logits, labels, groups, ks=(100, 200), draws=5, baseline=baseline)
    assert set(rows) == {"training", "100", "200"}
    for k in ("100", "200"):
        assert rows[k]["ece"]["median"] < rows["training"]["ece"] / 2
        assert rows[k]["n_test"]["median"] <= n - int(k)
        assert 0.8 <= rows[k]["sensitivity"]["median"] <= 1.0
    assert (
        rows["training"]["recall_malignant"] < rows["200"]["recall_malignant"]["median"]
    )
    # Version 1's fit on the same draws: other probabilities (tests/ml/
    # test_site_calibration.py compares their calibration), measured alike.
    first = curve(logits, labels, groups, ks=(100, 200), draws=5, version=1)
    assert set(first) == {"100", "200"}
    for k in ("100", "200"):
        assert first[k]["n_test"] == rows[k]["n_test"]  # the same draws
        assert first[k]["ece"] != rows[k]["ece"]
    differences = paired(rows, first)
    assert set(differences) == {"100", "200"}
    for k in ("100", "200"):
        ece = np.subtract(rows[k]["per_draw"]["ece"], first[k]["per_draw"]["ece"])
        assert differences[k]["ece_difference_mean"] == pytest.approx(ece.mean())
        assert differences[k]["ece_lower_share"] == pytest.approx((ece < 0).mean())
        assert differences[k]["draws"] == 5


def test_the_caution_multiple_is_the_smallest_every_fold_passes_at():
    def rates(first_passing_at: float) -> dict[str, float]:
        return {
            str(m): 0.96 if m >= first_passing_at else 0.90 for m in CAUTION_MULTIPLES
        }

    assert caution_multiple([rates(1.5), rates(2.5)]) == 2.5
    assert caution_multiple([rates(1.0)]) == 1.0
    assert caution_multiple([rates(99.0)]) is None
    assert caution_multiple([]) is None


def test_folds_trained_sessions_apart_keep_their_fold_model_rows(tmp_path):
    """A fold whose model is not on this machine keeps its earlier fold-model row (same
    ks, draws and seed) instead of being re-scored by the committed model."""
    rows = {
        source: {"model": f"fold-{source}", "held_out_in_training": False, "curve": {}}
        for source in SOURCES
    }
    previous = {
        "ks": [100],
        "draws": 3,
        "seed": 0,
        "calibration_version": FORMAT_VERSION,
        "prior_strength": PRIOR_STRENGTH,
        "folds": rows,
    }
    report = site_curve(
        tmp_path,
        tmp_path / "unused",
        ks=(100,),
        draws=3,
        previous=previous,
        scores_dir=tmp_path / "no-kept-scores",
    )
    assert {s: f["model"] for s, f in report["folds"].items()} == {
        s: f"fold-{s}" for s in SOURCES
    }
    assert all(f["carried"] for f in report["folds"].values())


def test_kept_fold_scores_are_measured_again_without_the_fold_model(tmp_path):
    """A fold model's kept scores stand in for the model: measured, not carried, with the
    fold model's own training calibration as the baseline."""
    rng = np.random.default_rng(3)
    n = 300
    for source in SOURCES:
        labels = rng.choice(3, n, p=[0.3, 0.45, 0.25])
        np.savez_compressed(
            tmp_path / f"{source}.npz",
            paths=np.array([f"{source}/{i}.png" for i in range(n)]),
            labels=labels,
            groups=np.arange(n) // 2,
            doppler=np.zeros(n, bool),
            logits=rng.normal(size=(n, 3)) + 2.0 * np.eye(3)[labels],
            ood_score=rng.uniform(0, 20, n),
            lesion_area=rng.uniform(0, 0.1, n),
            model=np.array(f"fold-{source}"),
            temperature=np.float64(2.0),
            class_bias=np.array([0.5, 0.0, -0.5]),
            ood_threshold=np.float64(10.0),
        )
    previous = {"ks": [100], "draws": 3, "seed": 0, "folds": {}}
    report = site_curve(
        tmp_path / "no-loso",
        tmp_path / "unused",
        ks=(100,),
        draws=3,
        previous=previous,
        scores_dir=tmp_path,
    )
    for source, fold in report["folds"].items():
        assert fold["model"] == f"fold-{source}"
        assert not fold["held_out_in_training"] and "carried" not in fold
        assert fold["n"] == n and set(fold["curve"]) == {"training", "100"}
        # About 200 cases left: a perfectly calibrated model's ECE is a few hundredths.
        assert 0.005 < fold["curve"]["100"]["ece_floor"]["median"] < 0.12
        assert fold["curve"]["100"]["prior_strength"]["median"] in PRIOR_STRENGTHS
    with np.load(tmp_path / "busi.npz") as kept:
        baseline = SiteCalibration.from_training(
            temperature=2.0, class_bias=[0.5, 0.0, -0.5]
        )
        expected = metrics.expected_calibration_error(
            kept["labels"], baseline.probabilities(kept["logits"])
        )
    assert report["folds"]["busi"]["curve"]["training"]["ece"] == pytest.approx(
        expected
    )


def test_an_earlier_report_made_otherwise_is_not_carried():
    from ml.training.site_curve import _earlier_fold

    row = {"model": "fold-busi", "held_out_in_training": False, "curve": {}}
    made = {
        "ks": [100],
        "draws": 3,
        "seed": 0,
        "calibration_version": FORMAT_VERSION,
        "prior": PRIOR_CHOICE,
        "folds": {"busi": row},
    }
    assert _earlier_fold(made, "busi", ks=[100], draws=3, seed=0) == {
        **row,
        "carried": True,
    }
    # The same format with the prior's strength fixed: carried as that ablation.
    fixed = {k: v for k, v in made.items() if k != "prior"}
    v2_fixed = {"training": {"ece": 0.1}, "100": {"ece": {"median": 0.06}}}
    fixed.update(
        prior_strength=PRIOR_STRENGTH, folds={"busi": {**row, "curve": v2_fixed}}
    )
    carried = _earlier_fold(fixed, "busi", ks=[100], draws=3, seed=0)
    assert carried["curve"] == {"training": {"ece": 0.1}}
    assert carried["curve_prior_fixed"] == {"100": {"ece": {"median": 0.06}}}
    assert carried["current_version_missing"]
    # The same format fitted without the prior: carried as that ablation.
    unshrunk = {k: v for k, v in made.items() if k != "prior"}
    v2 = {"training": {"ece": 0.1}, "100": {"ece": {"median": 0.04}}}
    unshrunk["folds"] = {"busi": {**row, "curve": v2}}
    carried = _earlier_fold(unshrunk, "busi", ks=[100], draws=3, seed=0)
    assert carried["curve"] == {"training": {"ece": 0.1}}
    assert carried["curve_without_prior"] == {"100": {"ece": {"median": 0.04}}}
    assert carried["current_version_missing"]
    # A row of version 1 (a report without a format is version 1) is carried as what it
    # measured: its training row, and its curve as version 1's, with no current curve.
    v1 = {"training": {"ece": 0.1}, "100": {"ece": {"median": 0.05}}}
    older = {
        **{k: v for k, v in made.items() if k not in ("calibration_version", "prior")},
        "folds": {"busi": {**row, "curve": v1}},
    }
    carried = _earlier_fold(older, "busi", ks=[100], draws=3, seed=0)
    assert carried["curve"] == {"training": {"ece": 0.1}}
    assert carried["curve_version_1"] == {"100": {"ece": {"median": 0.05}}}
    assert carried["current_version_missing"] and carried["carried"]
    assert (
        _earlier_fold(
            {**older, "calibration_version": 7}, "busi", ks=[100], draws=3, seed=0
        )
        is None
    )
    assert _earlier_fold(made, "busi", ks=[100, 200], draws=3, seed=0) is None
    assert _earlier_fold(made, "busi", ks=[100], draws=20, seed=0) is None
    stand_in = {**made, "folds": {"busi": {**row, "held_out_in_training": True}}}
    assert _earlier_fold(stand_in, "busi", ks=[100], draws=3, seed=0) is None


def test_the_caution_carries_an_earlier_folds_pass_rates():
    passing = {str(m): 0.96 for m in CAUTION_MULTIPLES}
    previous = {
        "multiple": 1.5,
        "folds": [{"source": "busi", "passing": passing, "threshold": 14.2}],
    }
    carried = _earlier_caution_fold(previous, "busi")
    assert carried["carried"] and carried["auc_at_multiple"] == 1.5
    assert _earlier_caution_fold(previous, "bus-uclm") is None
    other_grid = {"folds": [{"source": "busi", "passing": {"1.0": 0.9}}]}
    assert _earlier_caution_fold(other_grid, "busi") is None
