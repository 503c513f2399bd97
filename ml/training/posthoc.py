"""Choices judged on saved per-image outputs, without running the network again.

Inputs are the ``.npz`` files :func:`ml.training.loso.heldout_outputs` writes: a LOSO fold's
``<work>/without-<source>/heldout.npz`` (the honest judge), or the same outputs of the
committed weights on a split (``python -m ml.training.posthoc dump``). Measured here:

- the study-level aggregate per patient (``ml.study`` rules), malignant vs benign AUC;
- per-source normal recall and normals with a predicted lesion, under the weights' own class
  offsets and under offsets fitted with an objective that weighs every source's classes
  (``fit_source_balanced_bias``);
- hiding the outline when the label is normal and the mask is small or weak;
- horizontal-flip test-time augmentation (logits and lesion probabilities averaged);
- an ensemble of separately trained models of the same fold (``python -m ml.training.posthoc
  ensemble SCORES.npz...``: a fold's ``heldout.npz`` or its kept scores in
  ``ml/reports/fold_scores/``): each member's and the ensemble's malignant-vs-benign AUC per
  image and per patient, and the paired difference ensemble minus each member.

``python -m ml.training.posthoc judge --fit VAL.npz... --test TEST.npz...`` prints the figures
as JSON; the model card's ablation rows quote them with the command.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from ml import metrics
from ml.config import CLASSES
from ml.metrics import BENIGN, MALIGNANT, NORMAL
from ml.study import RULES, per_group

logger = logging.getLogger(__name__)

KEYS = (
    "labels",
    "sources",
    "groups",
    "dice",
    "area",
    "net_logits",
    "net_logits_flip",
    "lesion_max",
    "lesion_mean_in_mask",
    "paths",
)


def load(paths: list[Path]) -> dict:
    """Concatenated outputs of several files; calibration from the first (one model)."""
    parts = [dict(np.load(path)) for path in paths]
    merged = {key: np.concatenate([part[key] for part in parts]) for key in KEYS}
    merged["temperature"] = float(parts[0]["temperature"])
    merged["class_bias"] = np.asarray(parts[0]["class_bias"], np.float64)
    return merged


def probabilities(
    logits: np.ndarray, bias: np.ndarray, temperature: float
) -> np.ndarray:
    return metrics.softmax(logits + bias, temperature)


def _patient_truth(
    labels: np.ndarray, groups: np.ndarray, names: np.ndarray
) -> np.ndarray:
    """Per patient of ``names``: 1 malignant (any image is), 0 benign (any image is, none
    malignant), -1 normal only."""
    truth = []
    for name in names:
        in_group = labels[groups == name]
        truth.append(
            1
            if (in_group == MALIGNANT).any()
            else 0
            if (in_group == BENIGN).any()
            else -1
        )
    return np.asarray(truth)


def patient_auc(
    labels: np.ndarray, groups: np.ndarray, malignant: np.ndarray, rule: str
) -> tuple[float, int]:
    """Malignant vs benign AUC per patient (a patient is malignant when any image is,
    benign when any image is benign and none malignant; normal-only patients left out)."""
    from sklearn.metrics import roc_auc_score

    names, values = per_group(groups, malignant, rule)
    truth = _patient_truth(labels, groups, names)
    kept = truth >= 0
    if len(np.unique(truth[kept])) < 2:
        return float("nan"), int(kept.sum())
    return float(roc_auc_score(truth[kept], values[kept])), int(kept.sum())


def patient_auc_intervals(
    labels: np.ndarray,
    groups: np.ndarray,
    malignant: np.ndarray,
    rounds: int = 2000,
    seed: int = 0,
) -> dict:
    """95% bootstrap intervals (resampling patients) of each rule's per-patient AUC, and of
    the paired difference max - mean."""
    from sklearn.metrics import roc_auc_score

    truth = _patient_truth(labels, groups, np.unique(groups))
    values = {rule: per_group(groups, malignant, rule)[1] for rule in RULES}
    kept = np.nonzero(truth >= 0)[0]
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {rule: [] for rule in (*RULES, "max_minus_mean")}
    for _ in range(rounds):
        chosen = rng.choice(kept, len(kept))
        if len(np.unique(truth[chosen])) < 2:
            continue
        aucs = {r: roc_auc_score(truth[chosen], values[r][chosen]) for r in RULES}
        for rule in RULES:
            samples[rule].append(aucs[rule])
        samples["max_minus_mean"].append(aucs["max"] - aucs["mean"])
    return {
        key: [float(v) for v in np.percentile(values_, [2.5, 97.5])]
        for key, values_ in samples.items()
    }


def source_recalls(
    labels: np.ndarray, predicted: np.ndarray, sources: np.ndarray
) -> dict[str, list[float | None]]:
    out = {}
    for source in np.unique(sources):
        chosen = sources == source
        out[str(source)] = [
            None if np.isnan(r) else float(r)
            for r in metrics.recalls(labels[chosen], predicted[chosen])
        ]
    return out


def fit_source_balanced_bias(
    logits: np.ndarray,
    labels: np.ndarray,
    sources: np.ndarray,
    grid: np.ndarray | None = None,
) -> np.ndarray:
    """Class offsets maximising the mean recall over every (source, class) cell present,
    so each source's normals weigh as much as another's (the pooled objective lets the
    largest source's normals decide): ``metrics.fit_class_bias``'s search, ties to the smallest
    move, on a wider grid."""
    cells = [
        (sources == s) & (labels == c)
        for s in np.unique(sources)
        for c in range(len(CLASSES))
        if ((sources == s) & (labels == c)).sum() >= 3
    ]

    def cell_recall(predicted: np.ndarray) -> float:
        return float(np.mean([(predicted[c] == labels[c]).mean() for c in cells]))

    return metrics.fit_class_bias(
        logits,
        labels,
        grid=np.arange(-1.0, 2.51, 0.25) if grid is None else grid,
        objective=cell_recall,
    )


def normals_with_lesion(
    labels: np.ndarray, area: np.ndarray, shown: np.ndarray
) -> float:
    normal = labels == NORMAL
    return float(((area > metrics.LESION_FALSE_POSITIVE_AREA) & shown)[normal].mean())


def outline_shown(
    predicted: np.ndarray,
    area: np.ndarray,
    confidence: np.ndarray,
    *,
    max_area: float,
    min_confidence: float,
) -> np.ndarray:
    """False where the outline would be hidden: label normal and mask small or weak."""
    hide = (predicted == NORMAL) & ((area < max_area) | (confidence < min_confidence))
    return ~hide


def _figures(
    out: dict, logits: np.ndarray, bias: np.ndarray, temperature: float
) -> dict:
    labels = out["labels"]
    probs = probabilities(logits, bias, temperature)
    predicted = probs.argmax(1)
    recall = metrics.recalls(labels, predicted)
    return {
        "recall": [float(r) for r in recall],
        "recall_per_source": source_recalls(labels, predicted, out["sources"]),
        "auc_malignant_vs_benign": metrics.malignant_vs_benign_auc(labels, probs),
        "ece": metrics.expected_calibration_error(labels, probs),
        "patient_auc": {
            rule: patient_auc(labels, out["groups"], probs[:, MALIGNANT], rule)
            for rule in RULES
        },
    }


def flip_dice(files: list[Path]) -> dict[str, float]:
    """Mean lesion-image Dice at the network's resolution, plain and with the mirrored
    image's lesion probabilities averaged in (truth masks from the array cache)."""
    from ml.training.arrays import load_arrays

    plain, tta = [], []
    for path in files:
        with np.load(path) as out:
            source = str(out["sources"][0])
            lesion = out["labels"] != NORMAL
            size = out["lesion"].shape[-1]
            truth = load_arrays(source, out["paths"].tolist(), size).masks
            mean = (out["lesion"].astype(np.float32) + out["lesion_flip"]) / 2
            plain.append(metrics.dice_per_image(truth, out["lesion"] >= 128)[lesion])
            tta.append(metrics.dice_per_image(truth, mean >= 127.5)[lesion])
    return {
        "dice_lesion_mean_network_resolution": float(np.concatenate(plain).mean()),
        "flip_tta": float(np.concatenate(tta).mean()),
    }


def judge(fit: dict, test: dict) -> dict:
    """Every choice fitted on ``fit`` (validation outputs) and measured on ``test``."""
    temperature, own_bias = test["temperature"], test["class_bias"]
    report: dict = {"images": len(test["labels"])}
    report["as_shipped"] = _figures(test, test["net_logits"], own_bias, temperature)
    report["as_shipped"]["patient_auc_ci95"] = patient_auc_intervals(
        test["labels"],
        test["groups"],
        probabilities(test["net_logits"], own_bias, temperature)[:, MALIGNANT],
    )
    report["as_shipped"]["normals_with_lesion_over_1pct"] = normals_with_lesion(
        test["labels"], test["area"], np.ones(len(test["labels"]), bool)
    )

    source_bias = fit_source_balanced_bias(
        fit["net_logits"], fit["labels"], fit["sources"]
    )
    report["source_balanced_offsets"] = {
        "class_bias": source_bias.tolist(),
        **_figures(test, test["net_logits"], source_bias, temperature),
    }

    tta = (test["net_logits"] + test["net_logits_flip"]) / 2
    report["flip_tta_logits"] = _figures(test, tta, own_bias, temperature)

    # Outline rule: thresholds chosen on the fit outputs, measured on test.
    fit_pred = probabilities(fit["net_logits"], fit["class_bias"], temperature).argmax(
        1
    )
    best = None
    for max_area in (0.0, 0.01, 0.02, 0.03, 0.05):
        for min_conf in (0.0, 0.6, 0.7, 0.8):
            shown = outline_shown(
                fit_pred,
                fit["area"],
                fit["lesion_mean_in_mask"],
                max_area=max_area,
                min_confidence=min_conf,
            )
            lesion = fit["labels"] != NORMAL
            kept_dice = float(np.where(shown, fit["dice"], 0.0)[lesion].mean())
            false = normals_with_lesion(fit["labels"], fit["area"], shown)
            # Dice may drop by at most 0.005; among those, fewest normals outlined.
            if kept_dice >= float(fit["dice"][lesion].mean()) - 0.005:
                key = (-false, kept_dice)
                if best is None or key > best[0]:
                    best = (key, max_area, min_conf)
    _, max_area, min_conf = best
    test_pred = probabilities(test["net_logits"], own_bias, temperature).argmax(1)
    shown = outline_shown(
        test_pred,
        test["area"],
        test["lesion_mean_in_mask"],
        max_area=max_area,
        min_confidence=min_conf,
    )
    lesion = test["labels"] != NORMAL
    report["outline_rule"] = {
        "max_area": max_area,
        "min_mean_lesion_probability": min_conf,
        "normals_with_lesion_over_1pct": normals_with_lesion(
            test["labels"], test["area"], shown
        ),
        "normals_with_lesion_per_source": {
            str(s): normals_with_lesion(
                test["labels"][test["sources"] == s],
                test["area"][test["sources"] == s],
                shown[test["sources"] == s],
            )
            for s in np.unique(test["sources"])
            if (test["labels"][test["sources"] == s] == NORMAL).any()
        },
        "dice_lesion_mean": float(np.where(shown, test["dice"], 0.0)[lesion].mean()),
        "dice_lesion_mean_before": float(test["dice"][lesion].mean()),
    }
    return report


def ensemble(paths: list[Path], rounds: int = 1000, seed: int = 0) -> dict:
    """Members (each with its own calibration) and their ensemble, the mean of the members'
    calibrated probabilities, on the images every member scored (matched by path).
    Intervals: 95% bootstrap resampling patients, the same draws for every member."""
    members = []
    for path in paths:
        with np.load(path) as data:
            members.append(
                {
                    "name": str(data["model"]) if "model" in data.files else str(path),
                    "paths": data["paths"].astype(str),
                    "labels": data["labels"],
                    "groups": data["groups"].astype(str),
                    "probabilities": probabilities(
                        data["logits"].astype(np.float64),
                        np.asarray(data["class_bias"], np.float64),
                        float(data["temperature"]),
                    ),
                }
            )
    common = sorted(set.intersection(*(set(m["paths"]) for m in members)))
    if not common:
        raise ValueError("the score files share no image")
    for member in members:
        order = {path: i for i, path in enumerate(member["paths"])}
        index = np.asarray([order[path] for path in common])
        for key in ("paths", "labels", "groups", "probabilities"):
            member[key] = member[key][index]
    labels, groups = members[0]["labels"], members[0]["groups"]
    for m in members:
        # Files name the same patients differently (kept scores by a member's path,
        # heldout.npz by source:group); the partition of the images must be the same.
        pairs = set(zip(m["groups"], groups, strict=True))
        if not np.array_equal(m["labels"], labels) or not (
            len(pairs) == len(set(groups)) == len(set(m["groups"]))
        ):
            raise ValueError("the members disagree on the images' labels or patients")
    scored = {m["name"]: m["probabilities"] for m in members}
    scored["ensemble"] = np.mean([m["probabilities"] for m in members], axis=0)

    def figures(indices: np.ndarray) -> dict[str, float]:
        out = {}
        for name, p in scored.items():
            out[f"{name}:image"] = metrics.malignant_vs_benign_auc(
                labels[indices], p[indices]
            )
            # Per patient: its most suspicious image (the product's study rule); in a
            # bootstrap draw a patient drawn twice is one patient here.
            out[f"{name}:patient"] = patient_auc(
                labels[indices], groups[indices], p[indices][:, MALIGNANT], "max"
            )[0]
        for name in scored:
            if name != "ensemble":
                for level in ("image", "patient"):
                    out[f"ensemble-{name}:{level}"] = (
                        out[f"ensemble:{level}"] - out[f"{name}:{level}"]
                    )
        return out

    point = figures(np.arange(len(labels)))
    intervals = metrics.bootstrap_intervals(figures, groups, rounds=rounds, seed=seed)
    return {
        "images": len(labels),
        "patients": len(np.unique(groups)),
        "members": [m["name"] for m in members],
        "figures": {
            key: {"value": value, "ci95": intervals.get(key)}
            for key, value in point.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml.training.posthoc")
    commands = parser.add_subparsers(dest="command", required=True)
    dump = commands.add_parser("dump", help="outputs of saved weights on split parts")
    dump.add_argument("--weights", type=Path, default=None)
    dump.add_argument("--parts", nargs="+", default=["val", "test"])
    dump.add_argument("--out", type=Path, required=True)
    judged = commands.add_parser(
        "judge", help="fit on --fit outputs, measure on --test"
    )
    judged.add_argument("--fit", type=Path, nargs="+", required=True)
    judged.add_argument("--test", type=Path, nargs="+", required=True)
    together = commands.add_parser(
        "ensemble", help="separately trained models of one fold, alone and averaged"
    )
    together.add_argument("scores", type=Path, nargs="+")
    together.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.command == "dump":
        from ml.inference import Analyzer
        from ml.training.evaluate import collect
        from ml.training.loso import heldout_outputs
        from ml.training.sources import SOURCES
        from ml.training.splits import load_split

        analyzer = Analyzer.load(args.weights)
        args.out.mkdir(parents=True, exist_ok=True)
        for part in args.parts:
            for source in SOURCES:
                paths = load_split(source)[part]
                results = collect(analyzer, source, paths)
                np.savez_compressed(
                    args.out / f"{source}_{part}.npz",
                    **heldout_outputs(analyzer, source, paths, results),
                )
        return 0
    if args.command == "ensemble":
        print(json.dumps(ensemble(args.scores, args.bootstrap), indent=1))
        return 0
    report = judge(load(args.fit), load(args.test))
    report["flip_tta_dice"] = flip_dice(args.test)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
