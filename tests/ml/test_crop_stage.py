"""The lesion-crop second stage's measurement (ml.training.crop_stage), without the network."""

from __future__ import annotations

import numpy as np

from ml.metrics import BENIGN, MALIGNANT
from ml.training.crop_stage import (
    MARGINS,
    STRENGTHS,
    choose,
    compare,
)


def _part(rng, n, informative: bool, shift: float = 0.0) -> dict:
    labels = rng.choice([BENIGN, MALIGNANT], n)
    features = rng.normal(size=(n, 16)) + shift
    if informative:
        features[:, 0] += 2.0 * (labels == MALIGNANT)
    return {
        "labels": labels,
        "features": features,
        "features_mirror": features + rng.normal(scale=0.1, size=features.shape),
    }


def test_features_and_margin_are_chosen_on_the_training_sources_alone():
    """Only the 0.3 margin's first eight columns carry the class in both training sources:
    the inner leave-one-source-out must find them (it sees no third source)."""
    rng = np.random.default_rng(0)
    train = {
        source: {
            margin: _part(rng, 120, informative=margin == 0.3, shift=offset)
            for margin in MARGINS
        }
        for source, offset in (("a", 0.0), ("b", 0.5))
    }
    sets = {"first half": (0, 8), "second half": (8, 16)}
    choice, inner = choose(train, sets)
    assert (choice.features, choice.margin) == ("first half", 0.3)
    assert choice.strength in STRENGTHS
    assert inner[str(choice)] > 0.8
    assert (
        max(v for k, v in inner.items() if not k.startswith("first half / 0.3 /")) < 0.7
    )


def test_compare_reports_the_paired_difference_by_patient():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(60), 2)
    labels = np.repeat(rng.choice([BENIGN, MALIGNANT], 60), 2)
    whole = rng.normal(size=120) + 0.8 * (labels == MALIGNANT)

    same = compare(labels, groups, whole, whole.copy(), rounds=200)
    assert same["auc_whole"] == same["auc_fused"]
    assert same["auc_difference_ci95"] == [0.0, 0.0]
    assert same["patients"] == 60 and same["images"] == 120

    perfect = compare(labels, groups, whole, (labels == MALIGNANT) * 10.0, rounds=200)
    assert perfect["auc_fused"] == 1.0 and perfect["patient_auc_fused"] == 1.0
    assert perfect["auc_difference_ci95"][0] > 0
    assert perfect["patient_auc_difference_ci95"][0] > 0
