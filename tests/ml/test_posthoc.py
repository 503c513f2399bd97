from __future__ import annotations

import numpy as np
import pytest

from ml.training.posthoc import (
    fit_source_balanced_bias,
    normals_with_lesion,
    outline_shown,
    patient_auc,
)


def test_patient_auc_takes_the_most_suspicious_image_and_skips_normal_patients():
    labels = np.array([2, 1, 1, 1, 0, 0])
    groups = np.array(["a", "a", "b", "c", "d", "d"])
    malignant = np.array([0.9, 0.1, 0.3, 0.95, 0.99, 0.0])
    # Patient a (malignant) scores 0.9; benign b 0.3 and c 0.95; d is normal only.
    auc, patients = patient_auc(labels, groups, malignant, "max")
    assert patients == 3 and auc == pytest.approx(0.5)
    auc, _ = patient_auc(labels, groups, malignant, "mean")
    assert auc == pytest.approx(0.5)  # a: 0.5, b: 0.3, c: 0.95


def test_source_balanced_offsets_respect_a_small_sources_normals():
    # Source "big": its normals are well separated. Source "small": normals whose normal
    # logit trails the others by 0.6; its cells count as much as big's, so the normal
    # offset moves far enough to call them normal without costing the lesion classes.
    rng = np.random.default_rng(0)
    rows, labels, sources = [], [], []
    for source, n, normal_margin in (("big", 60, 3.0), ("small", 6, -0.6)):
        for c in range(3):
            for _ in range(n):
                logit = rng.normal(0, 0.05, 3)
                logit[c] += 3.0 if c else normal_margin
                rows.append(logit)
                labels.append(c)
                sources.append(source)
    logits, labels, sources = np.array(rows), np.array(labels), np.array(sources)
    bias = fit_source_balanced_bias(logits, labels, sources)
    predicted = (logits + bias).argmax(1)
    small_normals = (sources == "small") & (labels == 0)
    assert (predicted[small_normals] == 0).all()
    assert (predicted[labels == 1] == 1).mean() > 0.95


def test_the_outline_is_hidden_only_for_normal_labels_with_small_or_weak_masks():
    predicted = np.array([0, 0, 0, 1])
    area = np.array([0.005, 0.2, 0.2, 0.005])
    confidence = np.array([0.9, 0.9, 0.55, 0.5])
    shown = outline_shown(
        predicted, area, confidence, max_area=0.01, min_confidence=0.6
    )
    assert shown.tolist() == [False, True, False, True]
    labels = np.array([0, 0, 0, 1])
    assert normals_with_lesion(labels, area, shown) == pytest.approx(1 / 3)
