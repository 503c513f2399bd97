"""``python -m ml crop-stage``: does a second look at the lesion pay, judged leave one source out?

Issue 20 asks for a second stage that classifies a crop around the predicted lesion, taken
from the full-resolution scan, fused with the whole-image head. This module measures the
cheapest such stage before any of it goes into the product: the ImageNet-pretrained
EfficientNet-Lite0 (``shared/weights``, the encoder the task network starts from) pools a
square crop around the lesion at 224 px (the spatial means of blocks 4, 10 and 15, texture
at three scales, and of its last layer), and a logistic regression on one of
:data:`FEATURE_SETS` (standardised, L2, sources weighted alike, the crop and its mirror)
separates malignant from benign. Its calibrated log-odds are averaged with the whole-image
model's (the LOSO fold model's calibrated malignant-vs-benign log-odds), weight
:data:`FUSION_WEIGHT`, fixed before any fold was scored.

Per held-out source, nothing is chosen on it: the features, the crop margin and the
regression's strength are chosen by an inner leave-one-source-out on the two training
sources (fit on one, AUC on the other, both ways), then the regression is fitted on both
with their truth-mask boxes.
The held-out source is scored with

- the fold model's own predicted lesion box (``lesion_box`` in the kept fold scores,
  ``ml/reports/fold_scores/``): the honest figure; an image without a predicted lesion keeps
  its whole-image score;
- its truth-mask box: an upper bound (a perfect outline), reported beside it, never alone.

Per image and per patient (the most suspicious lesion image of each), with paired bootstrap
intervals by patient of fused minus whole-image AUC. Fold scores kept before the boxes were
(the earlier fold models') have only the upper bound.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml import metrics
from ml.backbone import HEAD_FILTERS, LITE0, block_output_name
from ml.config import REPO_DIR, imagenet_weights_path
from ml.inference import bounding_box
from ml.metrics import BENIGN, MALIGNANT
from ml.training.site_curve import FOLD_SCORES_DIR, source_groups
from ml.training.sources import SOURCES, load_image, load_mask, read_manifest
from ml.zoom import square_crop

logger = logging.getLogger(__name__)

CACHE_DIR = REPO_DIR / "var" / "crop_stage"
CROP_SIDE = 224
# Context around the lesion's box, as a fraction of its longer side on each side.
MARGINS = (0.1, 0.3, 0.8)
# Inverse L2 strengths of the logistic regression (scikit-learn's C).
STRENGTHS = (0.0003, 0.001, 0.003, 0.01)
# Encoder blocks whose spatial means are pooled besides the last layer's, and the columns of
# the pooled vector each feature set uses.
POOLED_BLOCKS = (4, 10, 15)


def _block_channels(index: int) -> int:
    for group in LITE0.groups:
        if index < group.repeats:
            return group.filters
        index -= group.repeats
    raise ValueError("no such block")


_BLOCKS_WIDTH = sum(_block_channels(b) for b in POOLED_BLOCKS)
FEATURE_SETS = {
    "last layer": (_BLOCKS_WIDTH, _BLOCKS_WIDTH + HEAD_FILTERS),
    "blocks 4, 10, 15": (0, _BLOCKS_WIDTH),
}
FUSION_WEIGHT = 0.5
BOOTSTRAP_ROUNDS = 1000


class CropEncoder:
    """ImageNet EfficientNet-Lite0 pooled features of crops and of their mirrors: the
    spatial means of :data:`POOLED_BLOCKS`' outputs and of the last layer, concatenated."""

    def __init__(self, weights: Path | None = None):
        import keras

        from ml.backbone import build_efficientnet_lite, load_imagenet_weights

        encoder = build_efficientnet_lite((CROP_SIDE, CROP_SIDE, 3), include_top=False)
        load_imagenet_weights(encoder, weights or imagenet_weights_path())
        taps = [encoder.get_layer(block_output_name(b)).output for b in POOLED_BLOCKS]
        pooled = [
            keras.layers.GlobalAveragePooling2D()(tap)
            for tap in (*taps, encoder.output)
        ]
        self._model = keras.Model(encoder.input, keras.layers.Concatenate()(pooled))

    def __call__(self, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        from ml.preprocess import network_input

        x = np.asarray(network_input(np.stack(crops).astype(np.float32)))
        plain = self._model.predict(x, batch_size=16, verbose=0)
        mirror = self._model.predict(x[:, :, ::-1], batch_size=16, verbose=0)
        return plain.astype(np.float32), mirror.astype(np.float32)


def truth_crops(source: str, margin: float, encoder: CropEncoder) -> dict:
    """Features of every used lesion image's truth-box crop, cached under ``var/``."""
    cache = CACHE_DIR / f"{source}-truth-{margin}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as data:
            if data["features"].shape[1] == _BLOCKS_WIDTH + HEAD_FILTERS:
                return {key: data[key] for key in data.files}
    root = SOURCES[source].root()
    group_of = source_groups(source)
    crops, paths, labels = [], [], []
    for record in read_manifest(source, root):
        if record.path not in group_of or record.label == "normal":
            continue
        image = load_image(root, record)
        box = bounding_box(load_mask(root, record, (image.shape[1], image.shape[0])))
        if box is None:
            continue
        crops.append(square_crop(image, box, margin, CROP_SIDE))
        paths.append(record.path)
        labels.append(MALIGNANT if record.label == "malignant" else BENIGN)
    plain, mirror = encoder(crops)
    out = {
        "paths": np.asarray(paths),
        "labels": np.asarray(labels),
        "groups": np.asarray([group_of[p] for p in paths]),
        "features": plain,
        "features_mirror": mirror,
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    logger.info("%s: %d truth-box crops at margin %s", source, len(paths), margin)
    return out


def predicted_crops(
    source: str, scored: dict, margin: float, encoder: CropEncoder
) -> dict:
    """Features of the crops around a fold model's predicted boxes (its kept scores'
    ``lesion_box``), for the used lesion images that have one."""
    root = SOURCES[source].root()
    records = {r.path: r for r in read_manifest(source, root)}
    crops, paths = [], []
    for path, label, doppler, box in zip(
        scored["paths"],
        scored["labels"],
        scored["doppler"],
        scored["lesion_box"],
        strict=True,
    ):
        if doppler or label not in (BENIGN, MALIGNANT) or box[0] < 0:
            continue
        image = load_image(root, records[str(path)])
        crops.append(square_crop(image, tuple(int(v) for v in box), margin, CROP_SIDE))
        paths.append(str(path))
    plain, mirror = encoder(crops)
    return {"paths": np.asarray(paths), "features": plain, "features_mirror": mirror}


def fit_classifier(parts: list[dict], strength: float):
    """Logistic regression, malignant vs benign, on the crops and mirrors of ``parts`` (one
    per source, each source weighted alike)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate(
        [np.concatenate([p["features"], p["features_mirror"]]) for p in parts]
    )
    y = np.concatenate([np.tile(p["labels"] == MALIGNANT, 2) for p in parts])
    weight = np.concatenate(
        [np.full(2 * len(p["labels"]), 1.0 / len(p["labels"])) for p in parts]
    )
    classifier = make_pipeline(
        StandardScaler(), LogisticRegression(C=strength, max_iter=5000)
    )
    classifier.fit(
        x, y, logisticregression__sample_weight=weight * len(weight) / weight.sum()
    )
    return classifier


def crop_log_odds(classifier, part: dict) -> np.ndarray:
    return (
        classifier.decision_function(part["features"])
        + classifier.decision_function(part["features_mirror"])
    ) / 2


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Malignant vs benign ROC AUC of ``scores``; NaN when one class is missing."""
    from sklearn.metrics import roc_auc_score

    malignant = labels == MALIGNANT
    if malignant.all() or not malignant.any():
        return float("nan")
    return float(roc_auc_score(malignant, scores))


@dataclass(frozen=True)
class Choice:
    """What the inner leave-one-source-out chose: a feature set, a margin, a strength."""

    features: str
    margin: float
    strength: float

    def __str__(self) -> str:
        return f"{self.features} / {self.margin} / {self.strength}"


def columns(part: dict, span: tuple[int, int]) -> dict:
    """``part`` with only the feature columns ``span`` (start, stop)."""
    start, stop = span
    return {
        **part,
        "features": part["features"][:, start:stop],
        "features_mirror": part["features_mirror"][:, start:stop],
    }


def choose(
    train: dict[str, dict[float, dict]],
    feature_sets: dict[str, tuple[int, int]] = FEATURE_SETS,
) -> tuple[Choice, dict[str, float]]:
    """The choice with the best mean AUC of fitting on one training source and scoring the
    other, both ways; and every choice's figure."""
    first, second = train
    inner = {}
    for name, margin, strength in itertools.product(feature_sets, MARGINS, STRENGTHS):
        a = columns(train[first][margin], feature_sets[name])
        b = columns(train[second][margin], feature_sets[name])
        inner[Choice(name, margin, strength)] = float(
            np.mean(
                [
                    _auc(b["labels"], crop_log_odds(fit_classifier([a], strength), b)),
                    _auc(a["labels"], crop_log_odds(fit_classifier([b], strength), a)),
                ]
            )
        )
    best = max(inner, key=inner.get)
    return best, {str(choice): value for choice, value in inner.items()}


def whole_image_log_odds(scored: dict) -> np.ndarray:
    """The fold model's calibrated malignant-vs-benign log-odds from its raw logits."""
    shifted = scored["logits"] + scored["class_bias"]
    return (shifted[:, MALIGNANT] - shifted[:, BENIGN]) / float(scored["temperature"])


def compare(
    labels: np.ndarray,
    groups: np.ndarray,
    whole: np.ndarray,
    fused: np.ndarray,
    *,
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = 0,
) -> dict:
    """AUC of ``whole`` and ``fused`` per image and per patient (its most suspicious
    image), with 95% bootstrap intervals of the paired difference, resampling patients
    (:func:`ml.metrics.bootstrap_intervals`)."""
    names, inverse = np.unique(groups, return_inverse=True)
    patient_labels = np.full(len(names), BENIGN)
    patient_labels[np.unique(inverse[labels == MALIGNANT])] = MALIGNANT
    top = {}
    for name, values in (("whole", whole), ("fused", fused)):
        top[name] = np.full(len(names), -np.inf)
        np.maximum.at(top[name], inverse, values)

    def difference(truth, first, second):
        return lambda i: {"d": _auc(truth[i], second[i]) - _auc(truth[i], first[i])}

    image_ci = metrics.bootstrap_intervals(
        difference(labels, whole, fused), groups, rounds=rounds, seed=seed
    )["d"]
    patient_ci = metrics.bootstrap_intervals(
        difference(patient_labels, top["whole"], top["fused"]),
        np.arange(len(names)),
        rounds=rounds,
        seed=seed,
    )["d"]
    return {
        "images": len(labels),
        "patients": len(names),
        "auc_whole": _auc(labels, whole),
        "auc_fused": _auc(labels, fused),
        "auc_difference_ci95": list(image_ci),
        "patient_auc_whole": _auc(patient_labels, top["whole"]),
        "patient_auc_fused": _auc(patient_labels, top["fused"]),
        "patient_auc_difference_ci95": list(patient_ci),
    }


def crop_stage_loso(scores_dir: Path = FOLD_SCORES_DIR) -> dict:
    """Every source with kept fold scores, held out in turn (see the module docstring)."""
    encoder = CropEncoder()
    sources = list(SOURCES)
    truth = {
        source: {margin: truth_crops(source, margin, encoder) for margin in MARGINS}
        for source in sources
    }
    report: dict = {
        "crop_side": CROP_SIDE,
        "feature_sets": list(FEATURE_SETS),
        "margins": list(MARGINS),
        "strengths": list(STRENGTHS),
        "fusion_weight": FUSION_WEIGHT,
        "folds": {},
    }
    for held in sources:
        path = Path(scores_dir) / f"{held}.npz"
        if not path.is_file():
            logger.info("%s: no kept fold scores, skipped", held)
            continue
        with np.load(path, allow_pickle=False) as data:
            scored = {key: data[key] for key in data.files}
        training = {s: truth[s] for s in sources if s != held}
        choice, inner = choose(training)
        span = FEATURE_SETS[choice.features]
        classifier = fit_classifier(
            [columns(training[s][choice.margin], span) for s in training],
            choice.strength,
        )
        whole_all = whole_image_log_odds(scored)
        index = {str(p): i for i, p in enumerate(scored["paths"])}
        fold: dict = {
            "model": str(scored["model"]),
            "features": choice.features,
            "margin": choice.margin,
            "strength": choice.strength,
            "inner_auc": inner,
        }
        held_truth = columns(truth[held][choice.margin], span)
        crop = crop_log_odds(classifier, held_truth)
        whole = whole_all[[index[str(p)] for p in held_truth["paths"]]]
        fold["crop_alone_auc_truth_box"] = _auc(held_truth["labels"], crop)
        fold["truth_box"] = compare(
            held_truth["labels"],
            held_truth["groups"],
            whole,
            (1 - FUSION_WEIGHT) * whole + FUSION_WEIGHT * crop,
        )
        if "lesion_box" in scored:
            predicted = columns(
                predicted_crops(held, scored, choice.margin, encoder), span
            )
            lesion = (~scored["doppler"]) & np.isin(
                scored["labels"], (BENIGN, MALIGNANT)
            )
            fused = whole_all.copy()
            at = np.asarray([index[str(p)] for p in predicted["paths"]], np.int64)
            crop = crop_log_odds(classifier, predicted)
            fused[at] = (1 - FUSION_WEIGHT) * whole_all[at] + FUSION_WEIGHT * crop
            fold["predicted_box_share"] = float(len(at) / lesion.sum())
            fold["predicted_box"] = compare(
                scored["labels"][lesion],
                scored["groups"][lesion],
                whole_all[lesion],
                fused[lesion],
            )
        report["folds"][held] = fold
        logger.info("%s: %s", held, json.dumps(fold, default=float))
    return report
