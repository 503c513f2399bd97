from __future__ import annotations

import numpy as np
import pytest

from ml.study import RULES, aggregate, per_group


def test_max_is_the_most_suspicious_image_and_names_it():
    result = aggregate([0.2, 0.9, 0.4])
    assert result.malignant == pytest.approx(0.9)
    assert result.driver == 1 and result.images == 3


def test_every_rule_is_driven_by_the_most_suspicious_image():
    values = [0.1, 0.6, 0.3]
    expected = {
        "max": 0.6,
        "mean": 1.0 / 3.0,
        "top2_mean": 0.45,
        "noisy_or": 1 - 0.9 * 0.4 * 0.7,
    }
    for rule in RULES:
        result = aggregate(values, rule)
        assert result.malignant == pytest.approx(expected[rule]), rule
        assert result.driver == 1


def test_ties_go_to_the_first_image_and_one_image_is_itself():
    assert aggregate([0.5, 0.5]).driver == 0
    assert aggregate([0.3], "noisy_or").malignant == pytest.approx(0.3)


def test_nothing_to_aggregate_and_bad_input_are_told_apart():
    assert aggregate([]) is None
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        aggregate([0.2, 1.5])
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        aggregate([np.nan])
    with pytest.raises(ValueError, match="study rule"):
        aggregate([0.2], "median")


def test_per_group_aggregates_each_patient():
    names, values = per_group(
        np.array(["b", "a", "b", "a"]), np.array([0.1, 0.7, 0.4, 0.2])
    )
    assert names.tolist() == ["a", "b"]
    np.testing.assert_allclose(values, [0.7, 0.4])
