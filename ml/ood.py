"""Is this image like the ones the model was trained on? Mahalanobis scores on encoder features.

Lee et al. (NeurIPS 2018): fit the mean and a shrunk covariance of pooled encoder features
on the training images; the squared Mahalanobis distance of a new image's features is its
out-of-distribution score. As in their feature ensemble, several depths are scored: the early
blocks see texture and intensity (a blank frame, noise, a document has no speckle), the last
layer sees content (a photo, an X-ray). Each depth's distance is divided by its number of
channels (its expected value in distribution) and the depths are summed. The threshold is a
high percentile of the validation images' scores, so the training sources' own images pass.
The statistics travel inside the weights archive (see ``ml.weights_io``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ml.config import BACKBONE

logger = logging.getLogger(__name__)

# The encoder's strides whose last block's spatial means join the class layer's (Lite0's
# blocks 2, 4 and 10).
FEATURE_STRIDES: tuple[int, ...] = (4, 8, 16)
MEAN_KEY = "ood/mean"
PRECISION_KEY = "ood/precision"
BLOCKS_KEY = "ood/blocks"
THRESHOLD_KEY = "ood/threshold"


def feature_layers(backbone: str = BACKBONE) -> list[str]:
    """The layers whose spatial means, in this order, make the feature vector (class layer last)."""
    from ml.backbone import backbone_named, block_output_name

    spec = backbone_named(backbone)
    return [
        block_output_name(spec.skip_blocks[stride], spec) for stride in FEATURE_STRIDES
    ]


@dataclass
class OodModel:
    mean: np.ndarray  # (D,)
    precisions: list[np.ndarray]  # one (d, d) inverse shrunk covariance per depth
    blocks: (
        np.ndarray
    )  # (depths, 2) start and end of each depth's slice of the features
    threshold: float  # scores above it are out of distribution

    def score(self, features: np.ndarray) -> np.ndarray:
        """Sum over depths of squared Mahalanobis distance / channels, per row of (N, D)."""
        centred = np.atleast_2d(np.asarray(features, np.float64)) - self.mean
        total = np.zeros(len(centred))
        for (start, end), precision in zip(self.blocks, self.precisions, strict=True):
            part = centred[:, start:end]
            # (part @ P) * part summed per row: the quadratic form as one matrix
            # product (einsum's three-operand path took 14x as long).
            total += ((part @ precision) * part).sum(axis=1) / (end - start)
        return total

    def in_distribution(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) <= self.threshold

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {
            MEAN_KEY: self.mean.astype(np.float32),
            BLOCKS_KEY: np.asarray(self.blocks, np.int64),
            THRESHOLD_KEY: np.asarray(self.threshold, np.float64),
        }
        for i, precision in enumerate(self.precisions):
            arrays[f"{PRECISION_KEY}/{i}"] = precision.astype(np.float32)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> OodModel | None:
        if MEAN_KEY not in arrays:
            return None
        if BLOCKS_KEY not in arrays:
            # The first, single-depth format (before the feature ensemble): its features
            # are not what the Analyzer computes now, so it cannot judge anything.
            logger.warning(
                "out-of-distribution statistics of an older format ignored; "
                "refit them with `python -m ml fit-ood`"
            )
            return None
        blocks = np.asarray(arrays[BLOCKS_KEY])
        return cls(
            arrays[MEAN_KEY].astype(np.float64),
            [
                arrays[f"{PRECISION_KEY}/{i}"].astype(np.float64)
                for i in range(len(blocks))
            ],
            blocks,
            float(arrays[THRESHOLD_KEY]),
        )


def fit(
    train_features: np.ndarray,
    val_features: np.ndarray,
    block_sizes: list[int] | None = None,
    *,
    keep: float = 0.975,
) -> OodModel:
    """Per-depth mean and Ledoit-Wolf shrunk covariance on training features; the threshold
    keeps ``keep`` of the validation images in distribution. ``block_sizes`` splits the
    feature columns into depths (default: one depth)."""
    from sklearn.covariance import LedoitWolf

    train_features = np.asarray(train_features, np.float64)
    sizes = block_sizes or [train_features.shape[1]]
    if sum(sizes) != train_features.shape[1]:
        raise ValueError(
            f"block sizes {sizes} do not add up to {train_features.shape[1]}"
        )
    ends = np.cumsum(sizes)
    blocks = np.stack([ends - np.asarray(sizes), ends], axis=1)
    estimators = [LedoitWolf().fit(train_features[:, s:e]) for s, e in blocks]
    model = OodModel(
        np.concatenate([e.location_ for e in estimators]),
        [e.precision_ for e in estimators],
        blocks,
        np.inf,
    )
    model.threshold = float(np.quantile(model.score(val_features), keep))
    return model
