"""A study's (or a patient's, or a lesion's) malignancy from its images' results.

A radiologist reads a lesion from several images; the model scores each image alone. The
study-level result is an aggregate of the images' calibrated malignant probabilities, and
names the image that drives it. ``max`` (the most suspicious image) is the rule the product
uses: judged per patient on the pooled test splits and the LOSO held-out outputs against the
other rules here (``ml/MODEL_CARD.md``, "Study-level result"), no other rule did better by
enough to give up the one a reader can check by opening a single image.

Plain numpy: the portal imports this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RULES: tuple[str, ...] = ("max", "mean", "top2_mean", "noisy_or")
DEFAULT_RULE = "max"


@dataclass(frozen=True)
class StudyMalignancy:
    malignant: float  # in [0, 1]
    driver: int  # index of the image that drives it (the most suspicious one)
    images: int  # how many images were aggregated


def aggregate(
    malignant: Sequence[float] | np.ndarray, rule: str = DEFAULT_RULE
) -> StudyMalignancy | None:
    """The aggregate of ``malignant`` (per-image probabilities in [0, 1]) by ``rule``.

    None when there is no image (nothing to say). The driver is always the image with the
    highest probability (the first such image on ties): under every rule it is the image
    that moves the aggregate most.
    """
    if rule not in RULES:
        raise ValueError(f"study rule must be one of {RULES}, got {rule!r}")
    values = np.asarray(malignant, np.float64).reshape(-1)
    if values.size == 0:
        return None
    if not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 1:
        raise ValueError("malignant probabilities must be finite and in [0, 1]")
    driver = int(np.argmax(values))
    if rule == "max":
        value = values[driver]
    elif rule == "mean":
        value = values.mean()
    elif rule == "top2_mean":
        value = np.sort(values)[-2:].mean()
    else:  # noisy_or: the chance that at least one image shows a malignancy
        value = 1.0 - np.prod(1.0 - values)
    return StudyMalignancy(float(value), driver, int(values.size))


def per_group(
    groups: Sequence[str] | np.ndarray,
    malignant: np.ndarray,
    rule: str = DEFAULT_RULE,
) -> tuple[np.ndarray, np.ndarray]:
    """``(names, aggregates)``: one aggregate per group (patient, study), names sorted."""
    groups = np.asarray(groups)
    names = np.unique(groups)
    values = np.array(
        [aggregate(malignant[groups == name], rule).malignant for name in names]
    )
    return names, values
