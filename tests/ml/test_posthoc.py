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


def _scores(path, paths, labels, groups, logits, **extra):
    np.savez(
        path,
        paths=np.asarray(paths),
        labels=np.asarray(labels),
        groups=np.asarray(groups),
        logits=np.asarray(logits, np.float64),
        class_bias=np.zeros(3),
        temperature=np.float64(1.0),
        **extra,
    )
    return path


def test_an_ensemble_is_scored_on_the_images_both_members_scored(tmp_path):
    from ml.training.posthoc import ensemble

    # Four lesion images of four patients: benign, malignant, benign, malignant.
    paths = ["a.png", "b.png", "c.png", "d.png"]
    labels = [1, 2, 1, 2]
    # Member one ranks a above b (AUC 0.75); member two, in another order and with
    # another name for each patient, ranks c above d (AUC 0.75); their mean is right.
    one = _scores(
        tmp_path / "one.npz",
        paths,
        labels,
        ["p1", "p2", "p3", "p4"],
        [[0, 0, 0.9], [0, 0, 0.8], [0, 0, 0.1], [0, 0, 1.0]],
        model=np.asarray("busnet-lite0-one"),
    )
    two = _scores(
        tmp_path / "two.npz",
        [*paths[::-1], "extra.png"],
        [2, 1, 2, 1, 0],
        ["fold:d", "fold:c", "fold:b", "fold:a", "fold:e"],
        [[0, 0, 0.5], [0, 0, 0.6], [0, 0, 1.0], [0, 0, 0.1], [0, 0, 0]],
    )
    report = ensemble([one, two], rounds=20)
    assert report["images"] == 4 and report["patients"] == 4
    assert report["members"] == ["busnet-lite0-one", str(two)]
    figures = report["figures"]
    assert figures["busnet-lite0-one:image"]["value"] == 0.75
    assert figures[f"{two}:image"]["value"] == 0.75
    assert figures["ensemble:image"]["value"] == 1.0
    assert figures["ensemble-busnet-lite0-one:image"]["value"] == 0.25
    assert figures["ensemble:patient"]["value"] == 1.0  # one image a patient


def test_an_ensemble_refuses_members_that_disagree_on_the_patients(tmp_path):
    from ml.training.posthoc import ensemble

    paths, labels, logits = ["a.png", "b.png"], [1, 2], [[0, 0, 0], [0, 0, 1]]
    one = _scores(tmp_path / "one.npz", paths, labels, ["p1", "p1"], logits)
    two = _scores(tmp_path / "two.npz", paths, labels, ["p1", "p2"], logits)
    with pytest.raises(ValueError, match="disagree"):
        ensemble([one, two], rounds=5)
