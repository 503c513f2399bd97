"""A site's own calibration and operating point, fitted on its signed reads (pure numpy).

The portal (an administrator's page) and the CLI (``python -m ml calibrate``) share this one
implementation; it imports neither TensorFlow nor Django, so the portal can import it.

Convention: calibrated probabilities are ``softmax((logits + offsets) / temperature)`` on the
network's raw class logits (``ImageAnalysis.class_logits``, before the training calibration),
exactly as the weights' own calibration is applied (``ml.inference``); the label shown is
``argmax(logits + decision_offsets)``.

Two questions, two fits (format version 2). The probabilities answer "how likely is each
class at this site": the offsets and the temperature are fitted together by the negative
log-likelihood of the site's reads (bias-corrected temperature scaling, Alexandari et al.
2020), so they carry the site's own case mix. The label answers "which class, weighing every
class alike": the decision offsets maximise balanced recall (:func:`ml.metrics.fit_class_bias`,
as the training calibration's offsets do). Version 1 fitted one set of offsets for both,
balanced recall first and the temperature after: its probabilities were calibrated to a
uniform class prior, not the site's, and no temperature can undo a prior shift (its ECE at
100 reads is in ``ml/MODEL_CARD.md``'s site-adaptation curve beside version 2's). A version 1
calibration still loads and means what it meant: its decision offsets are its offsets.

A site's probabilities are a correction of the model's own calibration, not a fit from
nothing: given the training calibration as ``prior``, the offsets and temperature are the
maximum a posteriori fit under a Gaussian prior centred on it, so 100 reads do not trade a
calibration that already fits the site for a noisier one, and still move one that does not.
How strong the prior is, the site's reads say (:func:`choose_prior_strength`: the strength
whose fits predict held-out reads best). The fit records the prior's id, strength and how it
was chosen in ``fitted_on``.

The operating point is a threshold on calibrated p(malignant): the highest threshold at
which at least ``target_sensitivity`` of the signed malignant cases are flagged
"suspicious". Without a threshold (``None``: not fitted) "suspicious" falls back to the
calibrated label being malignant, the training operating point.

:func:`estimate_prior_em` estimates a site's class prior from unlabeled analyses
(Saerens, Latinne & Decaestecker, 2002).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ml import metrics
from ml.config import CLASSES
from ml.metrics import (
    MALIGNANT,
    fit_bias_and_temperature,
    fit_class_bias,
    fit_offsets_and_temperature,
    reliability_bins,
)

__all__ = [
    "MIN_MALIGNANT_FOR_THRESHOLD",
    "MIN_READS_FOR_SITE_CALIBRATION",
    "PRIOR_STRENGTH",
    "PRIOR_STRENGTHS",
    "SiteCalibration",
    "choose_prior_strength",
    "estimate_prior_em",
    "evaluate_site_calibration",
    "fit_site_calibration",
    "is_unusual",
    "reliability_bins",
    "site_ood_threshold",
]

FORMAT_VERSION = 2
# Version 1 (one set of offsets for the label and the probabilities) still loads.
READABLE_VERSIONS = (1, 2)

# Below this many signed reads a site keeps the training calibration and operating point.
# The targets are stated at 100 reads (ECE <= 0.04, sensitivity within 0.85-0.95 at
# a 0.90 target); the site-adaptation curve in ml/MODEL_CARD.md (`python -m ml site-curve`)
# measures k = 25/50/100/200 per LOSO fold: with 25-50 reads the three fitted parameters and
# the threshold swing widely between draws, so 100 is the smallest k that is judged.
MIN_READS_FOR_SITE_CALIBRATION = 100
# A threshold at a 0.90 target resting on fewer than 10 malignant cases is the lowest score
# among them (ceil(0.9 * n) == n): the portal keeps the training threshold below this.
MIN_MALIGNANT_FOR_THRESHOLD = 10
# "Unusual for this model" against the site's own scans: a scan above the model's
# out-of-distribution threshold is unusual only if it is also above this percentile of the
# out-of-distribution scores of the site's signed scans (see `is_unusual`).
SITE_OOD_PERCENTILE = 99.0
# The decision offsets' grid (normal and malignant; benign stays 0): wider than the training
# calibration's (-1..2), because a new site's scanner can move a class's logits further than
# the training sources' validation images did (BUSI as the site, k = 100: the normal offset
# reached 2.0, the training grid's edge, in most draws; on this grid its out-of-sample
# balanced recall rose, `python -m ml site-curve`). The smallest offsets win ties.
DECISION_GRID = np.arange(-2.0, 4.01, 0.25)
# A site's probabilities are fitted as a maximum a posteriori correction of the model's own
# (training) calibration: a Gaussian prior centred on its log-temperature and its offsets in
# calibrated log-odds, its strength in summed-NLL units (10: sd 1/sqrt(2 * 10) = 0.22). How
# strong is the site's own reads' answer: the strength of PRIOR_STRENGTHS with the lowest
# cross-validated NLL on them (PRIOR_FOLDS folds by patient), so a model whose calibration
# already fits the site is held to it and one that does not is let go. A fixed strength of 10
# (chosen on the busi fold alone) held the bus-uclm and breast-lesions-usg folds near their fold
# models' training calibrations, which fit those sources badly; the fixed strength is kept as
# an ablation row of `python -m ml site-curve` (figures in ml/MODEL_CARD.md, reasons in
# ml/reports/notes.md).
PRIOR_STRENGTHS = (0.0, 1.0, 3.0, 10.0, 30.0, 100.0)
PRIOR_FOLDS = 5
# The strength when the reads come from too few patients to cross-validate (< PRIOR_FOLDS).
PRIOR_STRENGTH = 10.0


def _json_safe(value):
    """Plain JSON types: numpy scalars and arrays unpacked, NaN and infinities as None."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating | float):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def _logits_array(logits: np.ndarray, name: str = "logits") -> np.ndarray:
    array = np.asarray(logits, np.float64)
    if array.ndim != 2 or array.shape[1] != len(CLASSES):
        raise ValueError(
            f"{name} must have shape (n, {len(CLASSES)}) in the order {CLASSES}, "
            f"got {array.shape}"
        )
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return array


def _labels_array(labels: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    array = np.asarray(labels)
    if array.shape != (n,):
        raise ValueError(f"expected {n} labels, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"labels must be integer indices into {CLASSES}, got dtype {array.dtype}"
        )
    if array.size and (array.min() < 0 or array.max() >= len(CLASSES)):
        raise ValueError(
            f"labels must be in 0..{len(CLASSES) - 1} (indices into {CLASSES})"
        )
    return array.astype(np.int64)


@dataclass(frozen=True)
class SiteCalibration:
    """Temperature, class offsets, decision offsets and operating point; see the module
    docstring."""

    temperature: float
    offsets: tuple[float, float, float]
    threshold: float | None
    target_sensitivity: float
    n: int
    fitted_on: dict = field(default_factory=dict)
    # Content hash of everything else; computed when empty, checked when given.
    calibration_id: str = ""
    # The label's rule; None: the offsets (version 1 has no other).
    decision_offsets: tuple[float, float, float] | None = None
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        temperature = float(self.temperature)
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(
                f"temperature must be a positive number, got {self.temperature!r}"
            )
        offsets = tuple(float(v) for v in self.offsets)
        if len(offsets) != len(CLASSES) or not all(math.isfinite(v) for v in offsets):
            raise ValueError(
                f"offsets must be {len(CLASSES)} finite numbers ({CLASSES}), got {self.offsets!r}"
            )
        threshold = None if self.threshold is None else float(self.threshold)
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(
                f"threshold must be in [0, 1] or None, got {self.threshold!r}"
            )
        target = float(self.target_sensitivity)
        if not 0.0 < target < 1.0:
            raise ValueError(
                f"target_sensitivity must be strictly between 0 and 1, got {self.target_sensitivity!r}"
            )
        if int(self.n) < 0:
            raise ValueError(f"n must not be negative, got {self.n!r}")
        if self.version not in READABLE_VERSIONS:
            raise ValueError(
                f"calibration format version {self.version!r} is not one of {READABLE_VERSIONS}"
            )
        if self.decision_offsets is None:
            decision = offsets
        else:
            decision = tuple(float(v) for v in self.decision_offsets)
            if len(decision) != len(CLASSES) or not all(
                math.isfinite(v) for v in decision
            ):
                raise ValueError(
                    f"decision_offsets must be {len(CLASSES)} finite numbers ({CLASSES}), "
                    f"got {self.decision_offsets!r}"
                )
            if self.version == 1 and decision != offsets:
                raise ValueError(
                    "a version 1 calibration has no decision offsets of its own"
                )
        object.__setattr__(self, "temperature", temperature)
        object.__setattr__(self, "offsets", offsets)
        object.__setattr__(self, "decision_offsets", decision)
        object.__setattr__(self, "threshold", threshold)
        object.__setattr__(self, "target_sensitivity", target)
        object.__setattr__(self, "n", int(self.n))
        object.__setattr__(self, "fitted_on", _json_safe(dict(self.fitted_on)))
        expected = self._content_hash()
        if not self.calibration_id:
            object.__setattr__(self, "calibration_id", expected)
        elif self.calibration_id != expected:
            raise ValueError(
                f"calibration_id {self.calibration_id!r} does not match its parameters "
                f"({expected!r}): the calibration was altered"
            )

    def _parameters(self) -> dict:
        parameters = {
            "version": self.version,
            "classes": list(CLASSES),
            "temperature": self.temperature,
            "offsets": list(self.offsets),
            "threshold": self.threshold,
            "target_sensitivity": self.target_sensitivity,
            "n": self.n,
            "fitted_on": self.fitted_on,
        }
        if self.version >= 2:
            parameters["decision_offsets"] = list(self.decision_offsets)
        return parameters

    def _content_hash(self) -> str:
        canonical = json.dumps(
            self._parameters(), sort_keys=True, separators=(",", ":")
        )
        return "cal-" + hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {**self._parameters(), "calibration_id": self.calibration_id}

    @classmethod
    def from_dict(cls, d: dict) -> SiteCalibration:
        if not isinstance(d, dict):
            raise TypeError(
                f"a calibration must be a JSON object, got {type(d).__name__}"
            )
        version = d.get("version", FORMAT_VERSION)
        if version not in READABLE_VERSIONS:
            raise ValueError(
                f"calibration format version {version!r} is not one of {READABLE_VERSIONS}"
            )
        classes = d.get("classes", list(CLASSES))
        if list(classes) != list(CLASSES):
            raise ValueError(
                f"calibration classes {classes} do not match {list(CLASSES)}"
            )
        missing = [
            k
            for k in ("temperature", "offsets", "target_sensitivity", "n")
            if k not in d
        ]
        if missing:
            raise ValueError(f"calibration lacks {', '.join(missing)}")
        return cls(
            temperature=d["temperature"],
            offsets=tuple(d["offsets"]),
            threshold=d.get("threshold"),
            target_sensitivity=d["target_sensitivity"],
            n=d["n"],
            fitted_on=d.get("fitted_on") or {},
            calibration_id=d.get("calibration_id", ""),
            decision_offsets=None
            if d.get("decision_offsets") is None
            else tuple(d["decision_offsets"]),
            version=version,
        )

    @classmethod
    def from_training(
        cls,
        *,
        temperature: float,
        class_bias: Sequence[float],
        target_sensitivity: float = 0.9,
    ) -> SiteCalibration:
        """The weights' own calibration (``ModelMeta.temperature`` / ``class_bias``) with no
        threshold: what a site uses before it has enough signed reads."""
        return cls(
            temperature=temperature,
            offsets=tuple(class_bias),
            threshold=None,
            target_sensitivity=target_sensitivity,
            n=0,
            fitted_on={"source": "training"},
        )

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """(n, 3) calibrated probabilities from (n, 3) raw class logits."""
        array = _logits_array(logits)
        return metrics.softmax(array + np.asarray(self.offsets), self.temperature)

    def labels(self, logits: np.ndarray) -> np.ndarray:
        """(n,) class indices from (n, 3) raw class logits: ``argmax(logits +
        decision_offsets)``, every class weighed alike whatever the site's case mix."""
        array = _logits_array(logits)
        return (array + np.asarray(self.decision_offsets)).argmax(axis=1)

    def suspicious(self, probabilities: np.ndarray) -> np.ndarray:
        """(n,) bool: calibrated p(malignant) at or above the threshold; without a threshold,
        the label is malignant (the training operating point). The label is read back from
        the probabilities: ``T * log p - offsets`` is the logits up to a constant per row,
        so adding the decision offsets gives the label's argmax (for one set of offsets,
        the most probable class)."""
        array = np.asarray(probabilities, np.float64)
        if array.ndim != 2 or array.shape[1] != len(CLASSES):
            raise ValueError(
                f"probabilities must have shape (n, {len(CLASSES)}), got {array.shape}"
            )
        if self.threshold is None:
            logits = self.temperature * np.log(np.clip(array, 1e-300, None))
            shift = np.asarray(self.decision_offsets) - np.asarray(self.offsets)
            return (logits + shift).argmax(axis=1) == MALIGNANT
        return array[:, MALIGNANT] >= self.threshold


def site_ood_threshold(
    scores: Sequence[float] | np.ndarray, *, percentile: float = SITE_OOD_PERCENTILE
) -> float | None:
    """The `percentile` of a site's out-of-distribution scores (None without any): the
    site's own upper limit of what its scans look like."""
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
    array = np.asarray(scores, np.float64).ravel()
    array = array[np.isfinite(array)]
    if array.size == 0:
        return None
    return float(np.percentile(array, percentile))


def is_unusual(
    score: float | None,
    *,
    model_threshold: float | None,
    site_threshold: float | None = None,
) -> bool | None:
    """The "unusual for this model" caution: the score above the model's threshold (far
    from the training images) and, when the site has a threshold of its own, above that
    too (far from this site's own signed scans as well). None when it cannot be judged.

    Both must hold because each alone misleads: a site whose scanner differs from the
    training sites' has most scans above the model's threshold, a caution on every scan
    that says nothing; the site's own percentile alone would flag a scan for being rare
    at this site though the model knows it well. The site's threshold can only withdraw
    a caution, never add one."""
    if score is None or model_threshold is None:
        return None
    if score <= model_threshold:
        return False
    return site_threshold is None or score > site_threshold


def _threshold_for(p_malignant: np.ndarray, target_sensitivity: float) -> float | None:
    """The highest threshold t with mean(p >= t) >= target over the malignant cases given."""
    if p_malignant.size == 0:
        return None
    ordered = np.sort(p_malignant)[::-1]
    needed = math.ceil(target_sensitivity * ordered.size - 1e-9)
    return float(ordered[max(needed, 1) - 1])


def _nll(logits: np.ndarray, labels: np.ndarray, offsets, temperature: float) -> float:
    probabilities = metrics.softmax(logits + offsets, temperature)
    picked = probabilities[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(picked, 1e-12, None)).sum())


def choose_prior_strength(
    logits: np.ndarray,
    labels: np.ndarray,
    prior: SiteCalibration,
    *,
    groups: Sequence | np.ndarray | None = None,
    strengths: Sequence[float] = PRIOR_STRENGTHS,
    folds: int = PRIOR_FOLDS,
    seed: int = 0,
) -> tuple[float, dict[float, float]]:
    """The prior strength of ``strengths`` whose fits give the lowest negative
    log-likelihood on held-out reads, ``folds`` folds by ``groups`` (patients; each read its
    own when ``None``); and each strength's summed held-out NLL. :data:`PRIOR_STRENGTH`
    (and no figures) when the reads come from fewer than ``folds`` patients."""
    logits = _logits_array(logits)
    labels = _labels_array(labels, len(logits))
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    if len(np.unique(groups)) < folds:
        return PRIOR_STRENGTH, {}
    centre = (prior.offsets, prior.temperature)
    held_out: dict[float, float] = {}
    parts = _group_folds(groups, folds, seed)
    for strength in strengths:
        total = 0.0
        for test in parts:
            train = np.setdiff1d(np.arange(len(labels)), test)
            offsets, temperature = fit_bias_and_temperature(
                logits[train], labels[train], prior=centre, prior_strength=strength
            )
            total += _nll(logits[test], labels[test], offsets, temperature)
        held_out[float(strength)] = total
    return min(held_out, key=held_out.get), held_out


def fit_site_calibration(
    logits: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    *,
    target_sensitivity: float = 0.9,
    groups: Sequence | np.ndarray | None = None,
    scanners: Sequence | np.ndarray | None = None,
    version: int = FORMAT_VERSION,
    prior: SiteCalibration | None = None,
    prior_strength: float | None = None,
) -> SiteCalibration:
    """Fit the probabilities' offsets and temperature (by likelihood), the label's decision
    offsets (balanced recall) and the operating point on a site's signed reads.

    ``prior`` is the calibration the site's is a correction of (the model's own,
    :meth:`SiteCalibration.from_training`): the probabilities' fit is shrunk toward it with
    ``prior_strength``, by default the one the reads choose (:func:`choose_prior_strength`,
    cross-validated by ``groups``); ``None`` fits from the raw logits alone.

    ``labels`` are indices into ``CLASSES``; ``groups`` (patients) keep a patient's reads
    in one fold when the prior's strength is chosen, and are counted into ``fitted_on`` with
    ``scanners`` (e.g. DICOM Manufacturer / Model Name). The threshold is
    ``None`` when there is no malignant case to fit it on. ``version=1`` fits as version 1
    did (balanced-recall offsets for both, then the temperature, no prior): kept for the
    ablation in the site-adaptation curve, not for new sites.
    """
    logits = _logits_array(logits)
    labels = _labels_array(labels, len(logits))
    if len(labels) == 0:
        raise ValueError("no signed reads to fit a calibration on")
    if not 0.0 < float(target_sensitivity) < 1.0:
        raise ValueError(
            f"target_sensitivity must be strictly between 0 and 1, got {target_sensitivity!r}"
        )
    if version not in READABLE_VERSIONS:
        raise ValueError(f"version must be one of {READABLE_VERSIONS}, got {version!r}")
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != labels.shape:
            raise ValueError(f"expected {len(labels)} groups, got shape {groups.shape}")
    chosen_by = "given"
    if version == 1:
        offsets, temperature = fit_offsets_and_temperature(logits, labels)
        decision_offsets = offsets
    else:
        if prior is not None and prior_strength is None:
            prior_strength, held_out = choose_prior_strength(
                logits, labels, prior, groups=groups
            )
            chosen_by = (
                f"chosen by {PRIOR_FOLDS}-fold cross-validation by patient"
                if held_out
                else f"the default: too few patients to choose (< {PRIOR_FOLDS})"
            )
        offsets, temperature = fit_bias_and_temperature(
            logits,
            labels,
            prior=None if prior is None else (prior.offsets, prior.temperature),
            prior_strength=prior_strength,
        )
        decision_offsets = fit_class_bias(logits, labels, grid=DECISION_GRID)
    calibrated = metrics.softmax(logits + offsets, temperature)
    threshold = _threshold_for(
        calibrated[labels == MALIGNANT, MALIGNANT], target_sensitivity
    )
    fitted_on: dict = {
        "classes": {name: int((labels == c).sum()) for c, name in enumerate(CLASSES)}
    }
    if prior is not None and version >= 2:
        fitted_on["prior"] = {
            "calibration": prior.calibration_id,
            "strength": float(prior_strength),
            "chosen_by": chosen_by,
        }
    if groups is not None:
        fitted_on["groups"] = len(np.unique(groups))
    if scanners is not None:
        scanners = np.asarray(scanners, dtype=object)
        if scanners.shape != labels.shape:
            raise ValueError(
                f"expected {len(labels)} scanners, got shape {scanners.shape}"
            )
        names, counts = np.unique(scanners.astype(str), return_counts=True)
        fitted_on["scanners"] = {
            str(k): int(v) for k, v in zip(names, counts, strict=True)
        }
    return SiteCalibration(
        temperature=float(temperature),
        offsets=tuple(float(v) for v in offsets),
        decision_offsets=tuple(float(v) for v in decision_offsets),
        threshold=threshold,
        target_sensitivity=float(target_sensitivity),
        n=len(labels),
        fitted_on=fitted_on,
        version=version,
    )


def _group_folds(groups: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Indices of each test fold; whole groups (patients) stay together."""
    names, inverse = np.unique(groups, return_inverse=True)
    order = np.random.default_rng(seed).permutation(len(names))
    fold_of_group = np.empty(len(names), np.int64)
    fold_of_group[order] = np.arange(len(names)) % folds
    return [np.nonzero(fold_of_group[inverse] == f)[0] for f in range(folds)]


def _measures(
    labels: np.ndarray,
    probabilities: np.ndarray,
    predicted: np.ndarray,
    flagged: np.ndarray,
) -> dict:
    recall = metrics.recalls(labels, predicted)
    malignant = labels == MALIGNANT
    return {
        "n": len(labels),
        "ece": metrics.expected_calibration_error(labels, probabilities),
        **{f"recall_{name}": float(recall[c]) for c, name in enumerate(CLASSES)},
        "sensitivity": float(flagged[malignant].mean())
        if malignant.any()
        else float("nan"),
        "specificity": float((~flagged[~malignant]).mean())
        if (~malignant).any()
        else float("nan"),
        "flagged_fraction": float(flagged.mean()) if len(flagged) else float("nan"),
    }


def evaluate_site_calibration(
    logits: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    *,
    groups: Sequence | np.ndarray | None = None,
    folds: int = 5,
    target_sensitivity: float = 0.9,
    baseline: SiteCalibration | None = None,
    prior: SiteCalibration | None = None,
    seed: int = 0,
    bootstrap_rounds: int = 200,
) -> dict:
    """Cross-validated before/after of a site calibration, JSON-serialisable.

    Folds are drawn by ``groups`` (patients; each case its own group when ``None``): each
    fold's cases are scored by a calibration fitted on the other folds. "before" is
    ``baseline`` (the calibration in use, e.g. :meth:`SiteCalibration.from_training`;
    plain softmax of the logits when ``None``). Both sides report ECE, recall per class,
    the reliability diagram and the sensitivity achieved at the operating point, with 95%
    bootstrap intervals over groups; ``threshold`` is fitted on all the reads, with a
    bootstrap interval of refits; ``calibration`` is that fit (what the portal activates).
    Every fit is shrunk toward ``prior`` (see :func:`fit_site_calibration`).
    """
    logits = _logits_array(logits)
    labels = _labels_array(labels, len(logits))
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    if groups.shape != labels.shape:
        raise ValueError(f"expected {len(labels)} groups, got shape {groups.shape}")
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise ValueError("cross-validation needs reads from at least two patients")
    folds = int(min(max(folds, 2), n_groups))

    if baseline is None:
        before_probabilities = metrics.softmax(logits)
        before_predicted = before_probabilities.argmax(axis=1)
        before_flagged = before_predicted == MALIGNANT
    else:
        before_probabilities = baseline.probabilities(logits)
        before_predicted = baseline.labels(logits)
        before_flagged = baseline.suspicious(before_probabilities)

    after_probabilities = np.zeros_like(logits)
    after_predicted = np.zeros(len(labels), np.int64)
    after_flagged = np.zeros(len(labels), bool)
    fold_thresholds = []
    for test in _group_folds(groups, folds, seed):
        train = np.setdiff1d(np.arange(len(labels)), test)
        fitted = fit_site_calibration(
            logits[train],
            labels[train],
            target_sensitivity=target_sensitivity,
            groups=groups[train],
            prior=prior,
        )
        after_probabilities[test] = fitted.probabilities(logits[test])
        after_predicted[test] = fitted.labels(logits[test])
        after_flagged[test] = fitted.suspicious(after_probabilities[test])
        fold_thresholds.append(fitted.threshold)

    def statistic(indices: np.ndarray) -> dict:
        before = _measures(
            labels[indices],
            before_probabilities[indices],
            before_predicted[indices],
            before_flagged[indices],
        )
        after = _measures(
            labels[indices],
            after_probabilities[indices],
            after_predicted[indices],
            after_flagged[indices],
        )
        return {
            **{f"before/{k}": v for k, v in before.items()},
            **{f"after/{k}": v for k, v in after.items()},
        }

    intervals = metrics.bootstrap_intervals(
        statistic, groups, rounds=bootstrap_rounds, seed=seed
    )
    final = fit_site_calibration(
        logits,
        labels,
        target_sensitivity=target_sensitivity,
        groups=groups,
        prior=prior,
    )
    final_strength = (final.fitted_on.get("prior") or {}).get("strength")

    def refitted_threshold(indices: np.ndarray) -> dict:
        # NaN (left out of the interval) for a draw without a malignant case.
        if not (labels[indices] == MALIGNANT).any():
            return {"threshold": float("nan")}
        # The prior's strength the final fit chose: the interval is the threshold's.
        refit = fit_site_calibration(
            logits[indices],
            labels[indices],
            target_sensitivity=target_sensitivity,
            prior=prior,
            prior_strength=final_strength,
        )
        return {"threshold": refit.threshold}

    threshold_interval = None
    if (labels == MALIGNANT).any():
        interval = metrics.bootstrap_intervals(
            refitted_threshold, groups, rounds=bootstrap_rounds, seed=seed + 1
        ).get("threshold")
        if interval is not None and not np.isnan(interval[0]):
            threshold_interval = list(interval)

    def side(
        name: str,
        probabilities: np.ndarray,
        predicted: np.ndarray,
        flagged: np.ndarray,
    ) -> dict:
        measured = _measures(labels, probabilities, predicted, flagged)
        return {
            **measured,
            "intervals": {
                key: list(intervals[f"{name}/{key}"])
                for key in measured
                if f"{name}/{key}" in intervals
            },
            "reliability": reliability_bins(labels, probabilities),
        }

    return _json_safe(
        {
            "n": len(labels),
            "groups": int(n_groups),
            "folds": folds,
            "seed": seed,
            "target_sensitivity": float(target_sensitivity),
            "classes": {
                name: int((labels == c).sum()) for c, name in enumerate(CLASSES)
            },
            "baseline": None if baseline is None else baseline.calibration_id,
            "before": side(
                "before", before_probabilities, before_predicted, before_flagged
            ),
            "after": side("after", after_probabilities, after_predicted, after_flagged),
            "threshold": final.threshold,
            "threshold_interval": threshold_interval,
            "fold_thresholds": fold_thresholds,
            "calibration": final.to_dict(),
        }
    )


def estimate_prior_em(
    probabilities: np.ndarray,
    training_prior: Sequence[float] | np.ndarray,
    *,
    max_iter: int = 100,
    tol: float = 1e-6,
) -> np.ndarray:
    """A site's class prior from unlabeled posteriors (Saerens, Latinne & Decaestecker 2002).

    ``probabilities`` are (n, 3) calibrated posteriors under ``training_prior``; each step
    re-weights them by new prior / training prior, renormalises, and takes the new prior as
    their mean, until the prior moves less than ``tol``.
    """
    posteriors = np.asarray(probabilities, np.float64)
    if (
        posteriors.ndim != 2
        or posteriors.shape[1] != len(CLASSES)
        or len(posteriors) == 0
    ):
        raise ValueError(
            f"probabilities must have shape (n, {len(CLASSES)}) with n > 0, got {posteriors.shape}"
        )
    if not np.isfinite(posteriors).all() or (posteriors < 0).any():
        raise ValueError("probabilities must be finite and non-negative")
    base = np.asarray(training_prior, np.float64)
    if (
        base.shape != (len(CLASSES),)
        or (base <= 0).any()
        or not np.isfinite(base).all()
    ):
        raise ValueError(
            f"training_prior must be {len(CLASSES)} positive numbers, got {training_prior!r}"
        )
    base = base / base.sum()
    posteriors = posteriors / posteriors.sum(axis=1, keepdims=True)
    prior = base.copy()
    for _ in range(max_iter):
        weighted = posteriors * (prior / base)
        weighted /= weighted.sum(axis=1, keepdims=True)
        updated = weighted.mean(axis=0)
        converged = np.abs(updated - prior).max() < tol
        prior = updated
        if converged:
            break
    return prior


def read_calibration(path) -> SiteCalibration:
    """A calibration written by ``python -m ml calibrate`` (or the portal's export)."""
    from pathlib import Path

    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ValueError(f"calibration file not found: {path}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"calibration file {path} is not JSON: {exc}") from exc
    try:
        return SiteCalibration.from_dict(payload)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"calibration file {path}: {exc}") from exc


def read_labelled_predictions(
    predictions_dir, labels_csv
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray | None, int]:
    """Logits and labels of the images named in ``labels_csv`` (columns ``filename,label``,
    optional ``patient``; ``filename`` = the image's name without extension, as ``predict``
    names its JSON; ``label`` a class name or index) from ``predictions_dir/<filename>.json``.

    Returns logits, labels, names, patients (or None) and how many withheld images (not a
    breast ultrasound by the gate) were left out. Every problem is a ValueError naming the row.
    """
    import csv
    from pathlib import Path

    predictions_dir, labels_csv = Path(predictions_dir), Path(labels_csv)
    if not predictions_dir.is_dir():
        raise ValueError(f"predictions folder not found: {predictions_dir}")
    try:
        handle = labels_csv.open(newline="")
    except FileNotFoundError as exc:
        raise ValueError(f"labels file not found: {labels_csv}") from exc
    logits, labels, names, patients = [], [], [], []
    withheld = 0
    with handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or [])
        if not {"filename", "label"} <= columns:
            raise ValueError(
                f"{labels_csv}: needs the columns filename,label; has {sorted(columns)}"
            )
        has_patient = "patient" in columns
        seen: set[str] = set()
        for line, row in enumerate(reader, start=2):
            name = (row["filename"] or "").strip()
            label = (row["label"] or "").strip().lower()
            if not name:
                raise ValueError(f"{labels_csv}:{line}: empty filename")
            if name in seen:
                raise ValueError(f"{labels_csv}:{line}: {name!r} is listed twice")
            seen.add(name)
            if label in CLASSES:
                index = CLASSES.index(label)
            elif label.isdigit() and int(label) < len(CLASSES):
                index = int(label)
            else:
                raise ValueError(
                    f"{labels_csv}:{line}: label {row['label']!r} is not one of {CLASSES}"
                )
            path = predictions_dir / f"{name}.json"
            if not path.is_file():
                raise ValueError(f"{labels_csv}:{line}: no prediction {path}")
            try:
                prediction = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} is not JSON: {exc}") from exc
            if prediction.get("withheld"):
                withheld += 1
                continue
            row_logits = prediction.get("logits")
            if not isinstance(row_logits, list) or len(row_logits) != len(CLASSES):
                raise ValueError(
                    f"{path} has no logits: re-run `python -m ml predict` with this version"
                )
            logits.append([float(v) for v in row_logits])
            labels.append(index)
            names.append(name)
            patients.append((row.get("patient") or name).strip())
    if not labels:
        raise ValueError(f"{labels_csv}: no labelled predictions to fit on")
    return (
        np.asarray(logits, np.float64),
        np.asarray(labels, np.int64),
        names,
        np.asarray(patients) if has_patient else None,
        withheld,
    )
