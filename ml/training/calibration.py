"""Calibration on the pooled validation splits of every training source.

Two steps, both fitted on validation images only: per-class logit offsets that maximise
balanced recall (thresholds fitted on one hospital do not travel, so they are fitted on all
the sources together), then a temperature for calibrated probabilities (Guo et al., 2017).
"""

from __future__ import annotations

import logging

import numpy as np

from ml.metrics import fit_offsets_and_temperature

logger = logging.getLogger(__name__)


def calibrate(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, float]:
    """Class logit offsets for balanced recall, then the temperature, from validation logits."""
    # The same two steps as a site's own calibration (ml.site_calibration).
    class_bias, temperature = fit_offsets_and_temperature(logits, labels)
    logger.info(
        "calibration on %d validation images: class bias %s, temperature %.3f",
        len(labels),
        class_bias.tolist(),
        temperature,
    )
    return class_bias, temperature
