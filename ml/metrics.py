"""Classification, calibration and segmentation measures, with bootstrap intervals."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from ml.config import CLASSES

NORMAL, BENIGN, MALIGNANT = (
    CLASSES.index(name) for name in ("normal", "benign", "malignant")
)
LESION_FALSE_POSITIVE_AREA = 0.01


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = np.asarray(logits, np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def recalls(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    out = np.full(len(CLASSES), np.nan)
    for c in range(len(CLASSES)):
        selected = labels == c
        if selected.any():
            out[c] = float((predicted[selected] == c).mean())
    return out


def malignant_auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    # Imported here so that importing ml.metrics stays cheap for the portal
    # (ml.site_calibration uses the fitting functions below).
    from sklearn.metrics import roc_auc_score

    positives = labels == MALIGNANT
    if positives.all() or not positives.any():
        return float("nan")
    return float(roc_auc_score(positives, probabilities[:, MALIGNANT]))


def malignant_vs_benign_auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """AUC of P(malignant) among lesions only: the biopsy question, without normal images."""
    lesion = labels != NORMAL
    return malignant_auc(labels[lesion], probabilities[lesion])


def reliability_bins(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = 10
) -> list[dict]:
    """Top-label reliability diagram: equal-width confidence bins, each with its count, mean
    confidence and accuracy (``None`` when empty)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    out = []
    for low, high in itertools.pairwise(np.linspace(0.0, 1.0, bins + 1)):
        in_bin = (confidence > low) & (confidence <= high)
        count = int(in_bin.sum())
        out.append(
            {
                "low": float(low),
                "high": float(high),
                "count": count,
                "confidence": float(confidence[in_bin].mean()) if count else None,
                "accuracy": float(correct[in_bin].mean()) if count else None,
            }
        )
    return out


def expected_calibration_error(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = 10
) -> float:
    """Top-label ECE over the bins of :func:`reliability_bins` (Guo et al., 2017)."""
    return float(
        sum(
            b["count"] / len(labels) * abs(b["accuracy"] - b["confidence"])
            for b in reliability_bins(labels, probabilities, bins)
            if b["count"]
        )
    )


def dice_per_image(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Dice per image; an image where both masks are empty scores 1."""
    truth = truth.reshape(len(truth), -1).astype(bool)
    predicted = predicted.reshape(len(predicted), -1).astype(bool)
    intersection = (truth & predicted).sum(1)
    total = truth.sum(1) + predicted.sum(1)
    return np.where(total == 0, 1.0, 2.0 * intersection / np.maximum(total, 1))


def summary(
    labels: np.ndarray,
    probabilities: np.ndarray,
    dice: np.ndarray,
    lesion_area: np.ndarray,
) -> dict:
    """Every reported measure, from per-image class probabilities, Dice and predicted area."""
    predicted = probabilities.argmax(axis=1)
    recall = recalls(labels, predicted)
    lesion, normal = labels != NORMAL, labels == NORMAL
    lesion_dice = dice[lesion]
    # NaN: an image whose outline is not known (a site row without a signed outline).
    lesion_dice = lesion_dice[~np.isnan(lesion_dice)]
    nan = float("nan")
    return {
        "n": len(labels),
        "accuracy": float((predicted == labels).mean()),
        "recall_normal": float(recall[NORMAL]),
        "recall_benign": float(recall[BENIGN]),
        "recall_malignant": float(recall[MALIGNANT]),
        "mean_recall_benign_malignant": float(np.nanmean(recall[[BENIGN, MALIGNANT]])),
        "balanced_accuracy": float(np.nanmean(recall)),
        "auc_malignant_vs_rest": malignant_auc(labels, probabilities),
        "auc_malignant_vs_benign": malignant_vs_benign_auc(labels, probabilities),
        "ece": expected_calibration_error(labels, probabilities),
        "dice_lesion_mean": float(lesion_dice.mean()) if lesion_dice.size else nan,
        "dice_lesion_median": float(np.median(lesion_dice))
        if lesion_dice.size
        else nan,
        "lesions_missed_dice_under_0_05": int((lesion_dice < 0.05).sum()),
        "normal_with_lesion_over_1pct": float(
            (lesion_area[normal] > LESION_FALSE_POSITIVE_AREA).mean()
        )
        if normal.any()
        else nan,
    }


def bootstrap_intervals(
    statistic: Callable[[np.ndarray], dict],
    groups: np.ndarray,
    *,
    rounds: int = 1000,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """95% percentile intervals of every key of ``statistic(indices)``, resampling groups.

    ``groups`` names each case's patient or duplicate group: whole groups are drawn with
    replacement, because near-identical images of one patient are not independent evidence
    and resampling them one by one would make the intervals too narrow.
    """
    rng = np.random.default_rng(seed)
    names, inverse = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.nonzero(inverse == g)[0] for g in range(len(names))]
    samples: dict[str, list[float]] = {}
    for _ in range(rounds):
        drawn = rng.integers(0, len(members), len(members))
        indices = np.concatenate([members[g] for g in drawn])
        for key, value in statistic(indices).items():
            samples.setdefault(key, []).append(value)
    return {
        key: (
            float(np.nanpercentile(values, 2.5)),
            float(np.nanpercentile(values, 97.5)),
        )
        for key, values in samples.items()
        if key != "n"
    }


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature minimising validation negative log-likelihood (Guo et al., 2017)."""
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        probabilities = softmax(logits, float(np.exp(log_t)))
        return float(
            -np.log(probabilities[np.arange(len(labels)), labels] + 1e-12).mean()
        )

    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def fit_class_bias(
    logits: np.ndarray,
    labels: np.ndarray,
    *,
    grid: np.ndarray | None = None,
    objective: Callable[[np.ndarray], float] | None = None,
) -> np.ndarray:
    """Per-class logit offsets maximising balanced accuracy on validation data.

    A decision rule for unequal class costs and priors (logit adjustment): benign stays at 0,
    normal and malignant move on a coarse grid; among equally good offsets the smallest wins,
    so the rule moves only as far as the validation data supports. ``objective`` scores the
    predicted labels in place of balanced accuracy.
    """
    grid = np.asarray(np.arange(-1.0, 2.01, 0.25) if grid is None else grid, float)
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels)
    present = [c for c in range(len(CLASSES)) if (labels == c).any()]
    # Per normal offset, the score of every malignant offset of the grid.
    if objective is None and present:
        # Balanced recall, every malignant offset at once (a site calibration's
        # bootstrap refits this hundreds of times).
        masks = [labels == c for c in present]
        malignant = np.zeros((len(grid), len(CLASSES)))
        malignant[:, MALIGNANT] = grid

        def scores(normal_bias: float) -> np.ndarray:
            shifted = logits.copy()
            shifted[:, NORMAL] += normal_bias
            predicted = (shifted[None] + malignant[:, None, :]).argmax(2)
            return np.mean(
                [
                    (predicted[:, m] == c).mean(1)
                    for c, m in zip(present, masks, strict=True)
                ],
                axis=0,
            )

    else:
        if objective is None:

            def objective(predicted: np.ndarray) -> float:
                return float(np.nanmean(recalls(labels, predicted)))

        def scores(normal_bias: float) -> np.ndarray:
            out = []
            for malignant_bias in grid:
                bias = np.zeros(len(CLASSES))
                bias[NORMAL], bias[MALIGNANT] = normal_bias, malignant_bias
                out.append(objective((logits + bias).argmax(1)))
            return np.asarray(out, float)

    best, best_key = np.zeros(len(CLASSES)), None
    for normal_bias in grid:
        for malignant_bias, score in zip(grid, scores(normal_bias), strict=True):
            key = (round(float(score), 6), -abs(normal_bias) - abs(malignant_bias))
            if best_key is None or key > best_key:
                best = np.zeros(len(CLASSES))
                best[NORMAL], best[MALIGNANT] = normal_bias, malignant_bias
                best_key = key
    return best


def fit_bias_and_temperature(
    logits: np.ndarray,
    labels: np.ndarray,
    *,
    prior: tuple[np.ndarray, float] | None = None,
    prior_strength: float = 0.0,
) -> tuple[np.ndarray, float]:
    """Per-class logit offsets and the temperature minimising, together, the negative
    log-likelihood of ``softmax((logits + offsets) / T)`` (bias-corrected temperature scaling,
    Alexandari, Kundaje & Shrikumar, ICML 2020): probabilities calibrated to the class mix of
    the data fitted on. Benign's offset stays 0 (only differences between offsets matter).

    With a ``prior`` (offsets, temperature), the fit is a maximum a posteriori one: a
    Gaussian prior centred on it, ``prior_strength`` times the squared distance from it of
    the log-temperature and of the offsets divided by the temperature (their shift of the
    calibrated log-odds, whatever the network's scale) added to the summed NLL, so a few
    reads move the prior a little and many reads move it as far as they support."""
    from scipy.optimize import minimize

    logits = np.asarray(logits, np.float64)
    rows = np.arange(len(labels))
    if prior is None:
        centre, strength = np.zeros(3), 0.0
    else:
        offsets, temperature = np.asarray(prior[0], np.float64), float(prior[1])
        centre = np.array(
            [
                (offsets[NORMAL] - offsets[BENIGN]) / temperature,
                (offsets[MALIGNANT] - offsets[BENIGN]) / temperature,
                np.log(temperature),
            ]
        )
        strength = float(prior_strength)

    # x: the offsets divided by the temperature (normal, malignant), log-temperature.
    def objective(x: np.ndarray) -> float:
        shift = np.zeros(len(CLASSES))
        shift[NORMAL], shift[MALIGNANT] = x[0], x[1]
        scaled = logits / np.exp(x[2]) + shift
        scaled = scaled - scaled.max(axis=1, keepdims=True)
        log_p = scaled - np.log(np.exp(scaled).sum(axis=1, keepdims=True))
        penalty = strength * float(np.sum((x - centre) ** 2))
        return float(-log_p[rows, labels].sum() + penalty) / max(len(rows), 1)

    result = minimize(
        objective,
        centre,
        method="L-BFGS-B",
        bounds=[(-10.0, 10.0), (-10.0, 10.0), (np.log(0.05), np.log(20.0))],
    )
    temperature = float(np.exp(result.x[2]))
    bias = np.zeros(len(CLASSES))
    bias[NORMAL], bias[MALIGNANT] = result.x[0] * temperature, result.x[1] * temperature
    return bias, temperature


def fit_offsets_and_temperature(
    logits: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, float]:
    """Per-class logit offsets maximising balanced recall, then the temperature minimising the
    NLL of ``softmax((logits + offsets) / T)``: the training calibration
    (``ml.training.calibration``) and a site's (``ml.site_calibration``)."""
    class_bias = fit_class_bias(logits, labels)
    temperature = fit_temperature(logits + class_bias, labels)
    return class_bias, temperature
