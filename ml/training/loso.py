"""``python -m ml loso``: leave one source out — train on two hospitals, test on the whole third.

The honest estimate of how the model does at a hospital it has never seen, computed from the
data the project has. Each fold trains with the production recipe (on the schedule given by
``--epochs``/``--frozen-epochs``/``--patience``), selects its epoch and fits its calibration
and out-of-distribution statistics on the two training sources' validation splits, and is
scored on every used image of the held-out source.

Folds run one at a time (``--fold NAME``, hours apart if need be): each fold's row is merged
into the existing report and records the schedule that trained it. A fold whose weights exist
is reused with ``--resume``. Every fold also leaves its held-out per-image outputs in
``<work>/without-<source>/heldout.npz`` (see :func:`heldout_outputs`) so that aggregates,
offsets, test-time augmentation and ensembles can be judged without running the network again.

With ``--average-from EPOCH`` the fold model is the mean of its weights from that epoch on,
and the row also compares it with the same run's best epoch on the same held-out images
(paired bootstrap by patient; :func:`weight_average_verdict` applies the rule fixed before
the folds were scored); the best epoch's held-out outputs are kept beside it
(``best-epoch/heldout.npz``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ml.config import BACKBONE, IMAGE_SIZE
from ml.metrics import MALIGNANT
from ml.training.compare import compare_results
from ml.training.evaluate import collect, with_intervals
from ml.training.posthoc import patient_auc
from ml.training.sources import SOURCES
from ml.training.splits import SPLITS, load_split
from ml.training.train import BEST_EPOCH_DIR, TrainConfig, train

logger = logging.getLogger(__name__)

HELDOUT_FILE = "heldout.npz"

# Weight averaging's adoption rule, written down before any fold was scored (notes.md):
# in every judged fold (at least AVERAGE_MIN_FOLDS) each measure's difference, averaged
# minus the same run's best epoch, is at least its floor, and the mean over the folds of the
# AUC and Dice differences summed is positive.
AVERAGE_FLOORS = {
    "auc_malignant_vs_benign": -0.005,
    "dice_lesion_mean": -0.005,
    "recall_normal": -0.03,
}
AVERAGE_GAINS = ("auc_malignant_vs_benign", "dice_lesion_mean")
AVERAGE_MIN_FOLDS = 2


def weight_average_verdict(report: dict) -> tuple[bool | None, list[str]]:
    """The rule applied to a LOSO report's averaged folds: (adopted, reasons); adopted is
    None while fewer than :data:`AVERAGE_MIN_FOLDS` folds are judged."""
    judged = {
        source: fold["weight_average"]["measures"]
        for source, fold in report.get("folds", {}).items()
        if "weight_average" in fold
    }
    reasons = [
        f"{name} {m[name]['difference']:+.3f} < {floor} when {source} is held out"
        for source, m in judged.items()
        for name, floor in AVERAGE_FLOORS.items()
        if m[name]["difference"] is not None and m[name]["difference"] < floor
    ]
    if judged:
        gain = float(
            np.mean(
                [
                    sum(m[name]["difference"] for name in AVERAGE_GAINS)
                    for m in judged.values()
                ]
            )
        )
        if gain <= 0:
            reasons.append(f"mean AUC + Dice gain over the folds {gain:+.3f} <= 0")
    if reasons:
        return False, reasons
    if len(judged) < AVERAGE_MIN_FOLDS:
        return None, [f"{len(judged)} of at least {AVERAGE_MIN_FOLDS} folds judged"]
    return True, [f"mean AUC + Dice gain over {len(judged)} folds {gain:+.3f}"]


# The larger encoder's adoption rule, written down before any of its folds was scored
# (notes.md): one training per fold is one draw from the training-to-training spread, so in
# every fold its AUC m|b must reach the mean of the Lite0 production-schedule trainings of
# that fold plus BACKBONE_AUC_MARGIN (about one standard deviation of that spread), and its
# Dice their mean plus BACKBONE_DICE_FLOOR; all three folds must be judged. The Lite0
# figures are every such training the notes record, as they stood when the rule was written.
BACKBONE_AUC_MARGIN = 0.02
BACKBONE_DICE_FLOOR = -0.005
LITE0_TRAININGS = {
    "busi": {
        "auc_malignant_vs_benign": (0.860, 0.876, 0.901, 0.882, 0.911),
        "dice_lesion_mean": (0.663, 0.662, 0.668, 0.663),
    },
    "bus-uclm": {
        "auc_malignant_vs_benign": (0.849, 0.832, 0.850, 0.827, 0.793, 0.809),
        "dice_lesion_mean": (0.685, 0.683, 0.700, 0.698, 0.678),
    },
    "breast-lesions-usg": {
        "auc_malignant_vs_benign": (0.764, 0.745, 0.738),
        "dice_lesion_mean": (0.634, 0.480, 0.572),
    },
}


def lite0_means() -> dict[str, dict[str, float]]:
    """Per fold, the mean AUC and Dice of the recorded Lite0 trainings."""
    return {
        source: {name: float(np.mean(values)) for name, values in t.items()}
        for source, t in LITE0_TRAININGS.items()
    }


def backbone_bars() -> dict[str, dict[str, float]]:
    """Per fold, the AUC and Dice a new backbone's one training must reach."""
    margins = {
        "auc_malignant_vs_benign": BACKBONE_AUC_MARGIN,
        "dice_lesion_mean": BACKBONE_DICE_FLOOR,
    }
    return {
        source: {name: mean + margins[name] for name, mean in means.items()}
        for source, means in lite0_means().items()
    }


def backbone_verdict(report: dict) -> tuple[bool | None, list[str]]:
    """The rule applied to a LOSO report of another backbone: (adopted, reasons); adopted is
    None while a fold is missing and none has failed."""
    bars = backbone_bars()
    folds = report.get("folds", {})
    reasons = [
        f"{name} {folds[source]['metrics'][name]['value']:.3f} < {bar:.3f} when {source} "
        "is held out"
        for source, fold_bars in bars.items()
        if source in folds
        for name, bar in fold_bars.items()
        if folds[source]["metrics"][name]["value"] < bar
    ]
    if reasons:
        return False, reasons
    missing = [source for source in bars if source not in folds]
    if missing:
        return None, [f"not yet judged with {', '.join(missing)} held out"]
    return True, ["every fold reaches both bars"]


def _patient_auc(results: dict) -> float:
    return patient_auc(
        results["labels"],
        results["groups"],
        results["probabilities"][:, MALIGNANT],
        "max",
    )[0]


def held_out_paths(source: str) -> list[str]:
    split = load_split(source)
    return sorted(path for part in SPLITS for path in split[part])


def heldout_outputs(analyzer, source: str, paths: list[str], results: dict) -> dict:
    """``collect``'s per-image results plus what a second look at the network gives cheaply:
    the raw outputs at the network's resolution for the image and its horizontal mirror
    (un-mirrored), so flip test-time augmentation and mask-confidence rules can be judged
    offline. ``net_logits`` is the whole scan's one pass; ``logits`` (``collect``'s) also
    averages in the second look's crop when the model looks twice. Lesion probabilities are
    stored as uint8 (probability x 255)."""
    from ml.training.arrays import load_arrays
    from ml.training.fit import predict_arrays

    arrays = load_arrays(source, paths, analyzer.image_size)
    model = analyzer._model
    logits, lesion = predict_arrays(model, arrays.images, 8)
    flip_logits, flip_lesion = predict_arrays(model, arrays.images[:, :, ::-1], 8)
    flip_lesion = flip_lesion[:, :, ::-1]
    in_mask = lesion >= analyzer.meta.seg_threshold
    outputs = {key: value for key, value in results.items() if key != "threshold"}
    outputs.update(
        paths=np.asarray(paths),
        ood_threshold=np.float64(results["threshold"]),
        temperature=np.float64(analyzer.temperature),
        class_bias=np.asarray(analyzer.class_bias, np.float64),
        net_logits=logits.astype(np.float32),
        net_logits_flip=flip_logits.astype(np.float32),
        lesion_max=lesion.reshape(len(paths), -1).max(1).astype(np.float32),
        lesion_mean_in_mask=np.where(
            in_mask.any((1, 2)),
            (lesion * in_mask).sum((1, 2)) / np.maximum(in_mask.sum((1, 2)), 1),
            0.0,
        ).astype(np.float32),
        lesion=np.round(lesion * 255).astype(np.uint8),
        lesion_flip=np.round(flip_lesion * 255).astype(np.uint8),
    )
    return outputs


def leave_one_source_out(
    work_dir: Path,
    report_path: Path,
    *,
    epochs: int = 24,
    frozen_epochs: int = 2,
    patience: int | None = 8,
    augment: bool = True,
    image_size: int = IMAGE_SIZE,
    class_head: str = "global",
    backbone: str = BACKBONE,
    held_out: tuple[str, ...] = tuple(SOURCES),
    rounds: int = 1000,
    resume: bool = False,
    average_from: int | None = None,
) -> dict:
    """Train and score the folds of ``held_out``; rows of other folds already in
    ``report_path`` are kept, so folds can be run one at a time."""
    from ml.inference import Analyzer

    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    report.setdefault("folds", {})
    legacy = report.pop("schedule", None)  # one schedule for all folds (old reports)
    if legacy is not None:
        for fold in report["folds"].values():
            fold.setdefault("schedule", legacy)
    schedule = {
        "epochs": epochs,
        "frozen_epochs": frozen_epochs,
        "patience": epochs if patience is None else patience,
        "augment": augment,
        "image_size": image_size,
        "class_head": class_head,
        "backbone": backbone,
    }
    if average_from is not None:
        schedule["average_from"] = average_from
    for source in held_out:
        fold_dir = work_dir / f"without-{source}"
        training_sources = tuple(s for s in SOURCES if s != source)
        fold_schedule = dict(schedule)
        if resume and (fold_dir / "model.json").is_file():
            summary = fold_dir / "training_summary.json"
            if summary.is_file():  # the schedule that trained the reused weights
                config = json.loads(summary.read_text()).get("config", {})
                fold_schedule.update(
                    {key: config[key] for key in schedule if key in config}
                )
                if config.get("average_from") is not None:
                    fold_schedule["average_from"] = config["average_from"]
        else:
            logger.info("LOSO fold: train on %s, test on %s", training_sources, source)
            train(
                TrainConfig(
                    out_dir=fold_dir,
                    sources=training_sources,
                    epochs=epochs,
                    frozen_epochs=frozen_epochs,
                    patience=schedule["patience"],
                    augment=augment,
                    image_size=image_size,
                    class_head=class_head,
                    backbone=backbone,
                    average_from=average_from,
                    extra={"loso_held_out": source},
                )
            )
        analyzer = Analyzer.load(fold_dir)
        fold_schedule["backbone"] = analyzer.meta.backbone  # what the weights are
        if analyzer.second_look is not None:  # how the held-out scans were analysed
            fold_schedule["second_look"] = analyzer.second_look
        paths = held_out_paths(source)
        results = collect(analyzer, source, paths)
        np.savez_compressed(
            fold_dir / HELDOUT_FILE,
            **heldout_outputs(analyzer, source, paths, results),
        )
        report["folds"][source] = {
            "trained_on": list(training_sources),
            "model_version": analyzer.model_version,
            "schedule": fold_schedule,
            "best_epoch": analyzer.meta.training.get("best_epoch"),
            "epochs_run": analyzer.meta.training.get("epochs_run"),
            "images": len(results["labels"]),
            "metrics": with_intervals(results, rounds),
            # Per patient: its most suspicious image (the product's study rule).
            "patient_auc": _patient_auc(results),
        }
        averaged = analyzer.meta.training.get("weight_average")
        if averaged is not None:
            # Averaged weights: the same run's best epoch on the same images, paired.
            best_dir = fold_dir / BEST_EPOCH_DIR
            best = Analyzer.load(best_dir)
            if best.model_version != averaged["best_epoch_model"]:
                raise RuntimeError(
                    f"{best_dir} holds {best.model_version}, not the best epoch of the "
                    f"run that averaged {analyzer.model_version} "
                    f"({averaged['best_epoch_model']})"
                )
            best_results = collect(best, source, paths)
            np.savez_compressed(
                best_dir / HELDOUT_FILE,
                **heldout_outputs(best, source, paths, best_results),
            )
            report["folds"][source]["weight_average"] = {
                "best_epoch_model": best.model_version,
                "averaged_epochs": averaged["epochs"],
                # Per patient: its most suspicious image (the product's study rule).
                "patient_auc": {
                    "best_epoch": _patient_auc(best_results),
                    "averaged": _patient_auc(results),
                },
                **compare_results(best_results, results, rounds=rounds),
            }
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(report, indent=2) + "\n")
        logger.info(
            "LOSO %s: %s", source, json.dumps(report["folds"][source]["metrics"])
        )
    return report
