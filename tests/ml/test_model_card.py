"""The model card says which out-of-distribution threshold the flag applies."""

from __future__ import annotations

from ml.training.model_card import _ood_threshold_text


def test_the_card_names_the_caution_threshold_when_model_json_re_set_it():
    text = _ood_threshold_text({"threshold": 25.05, "validation_threshold": 12.52})
    assert text.startswith("Threshold 25.1: the caution's")
    assert "2.0 times the 97.5th percentile" in text and "(12.5)" in text


def test_the_card_names_the_validation_percentile_when_it_is_applied():
    for ood in (
        {"threshold": 12.52, "validation_threshold": 12.52},
        {"threshold": 12.52},
    ):
        assert _ood_threshold_text(ood) == (
            "Threshold 12.5: the 97.5th percentile of the pooled validation images' scores."
        )
