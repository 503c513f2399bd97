"""Is this image like the ones the model was trained on? A Mahalanobis score on encoder features.

Lee et al. (NeurIPS 2018): fit the mean and a shrunk covariance of the encoder's pooled
features on the training images; the squared Mahalanobis distance of a new image's features
is its out-of-distribution score. The threshold is a high percentile of the validation
images' scores, so the training sources' own images pass and a photo, a document or a chest
X-ray does not. The statistics travel inside the weights archive (see ``ml.weights_io``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MEAN_KEY = "ood/mean"
PRECISION_KEY = "ood/precision"
THRESHOLD_KEY = "ood/threshold"


@dataclass
class OodModel:
    mean: np.ndarray  # (D,)
    precision: np.ndarray  # (D, D) inverse of the shrunk covariance
    threshold: float  # scores above it are out of distribution

    def score(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance per row of ``features`` (N, D)."""
        centred = np.asarray(features, np.float64) - self.mean
        return np.einsum("nd,de,ne->n", centred, self.precision, centred)

    def in_distribution(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) <= self.threshold

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            MEAN_KEY: self.mean.astype(np.float32),
            PRECISION_KEY: self.precision.astype(np.float32),
            THRESHOLD_KEY: np.asarray(self.threshold, np.float64),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> OodModel | None:
        if MEAN_KEY not in arrays:
            return None
        return cls(
            arrays[MEAN_KEY].astype(np.float64),
            arrays[PRECISION_KEY].astype(np.float64),
            float(arrays[THRESHOLD_KEY]),
        )


def fit(
    train_features: np.ndarray, val_features: np.ndarray, *, keep: float = 0.975
) -> OodModel:
    """Mean and Ledoit-Wolf shrunk covariance on training features; the threshold keeps
    ``keep`` of the validation images in distribution."""
    from sklearn.covariance import LedoitWolf

    estimator = LedoitWolf().fit(np.asarray(train_features, np.float64))
    model = OodModel(estimator.location_, estimator.precision_, np.inf)
    model.threshold = float(np.quantile(model.score(val_features), keep))
    return model
