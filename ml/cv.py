"""``python -m ml cv``: k-fold cross-validation on the train+val pool (the test split is untouched).

Folds are stratified by class and grouped by near-duplicate group. Each fold trains on a
fixed schedule and keeps its last epoch, so nothing is selected on the fold it is scored on.
Training fits its calibration (class offsets, temperature) on the fold it is given as
validation, which here is the scored fold, so folds are scored on the raw network output:
recalls from the uncalibrated argmax, ECE before calibration.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ml import metrics

logger = logging.getLogger(__name__)

REPORTED = (
    "recall_normal",
    "recall_benign",
    "recall_malignant",
    "mean_recall_benign_malignant",
    "auc_malignant_vs_rest",
    "dice_lesion_mean",
    "normal_with_lesion_over_1pct",
    "ece_uncalibrated",
)


def cross_validate(
    data_dir: Path,
    split_path: Path,
    work_dir: Path,
    report_path: Path,
    *,
    folds: int = 5,
    epochs: int = 14,
    image_size: int = 256,
    seed: int = 20261129,
    resume: bool = False,
) -> dict:
    from sklearn.model_selection import StratifiedGroupKFold

    from ml.data import duplicate_groups, load_split, read_manifest
    from ml.evaluate import collect, summarise
    from ml.inference import Analyzer
    from ml.train import TrainConfig, train

    split = load_split(split_path)
    pool = sorted(split["train"] + split["val"])
    records = {r.path: r for r in read_manifest(data_dir)}
    pool_records = [records[p] for p in pool]
    groups = duplicate_groups(data_dir, pool_records)
    labels = [r.class_index for r in pool_records]
    per_fold = []
    folder = StratifiedGroupKFold(
        n_splits=folds, shuffle=True, random_state=seed % (2**32)
    )
    for fold, (train_idx, eval_idx) in enumerate(folder.split(pool, labels, groups)):
        fold_dir = work_dir / f"fold{fold}"
        fold_dir.mkdir(parents=True, exist_ok=True)
        fold_split = fold_dir / "split.json"
        eval_paths = [pool[i] for i in eval_idx]
        fold_split.write_text(
            json.dumps(
                {"train": [pool[i] for i in train_idx], "val": eval_paths, "test": []}
            )
        )
        if not (resume and (fold_dir / "model.json").is_file()):
            train(
                TrainConfig(
                    data_dir=data_dir,
                    split_path=fold_split,
                    out_dir=fold_dir,
                    image_size=image_size,
                    epochs=epochs,
                    seed=seed + fold,
                    select_best=False,
                )
            )
        results = collect(Analyzer.load(fold_dir), data_dir, eval_paths)
        # The fold's calibration was fitted on this very fold: score the raw output.
        results["probabilities"] = metrics.softmax(results["logits"])
        summary = summarise(results)
        summary["ece_uncalibrated"] = summary["ece"]
        logger.info(
            "fold %d: %s", fold, json.dumps({k: round(summary[k], 3) for k in REPORTED})
        )
        per_fold.append(summary)
    report = {
        "description": f"{folds}-fold cross-validation on the {len(pool)} train+val images (grouped, stratified), "
        f"{epochs} epochs per fold, last epoch kept; scored on the uncalibrated output.",
        "command": f"python -m ml cv --folds {folds} --epochs {epochs}",
        "folds_metrics": {
            key: {
                "mean": float(np.nanmean(values)),
                "sd": float(np.nanstd(values, ddof=1)),
                "values": values,
            }
            for key in REPORTED
            for values in [[float(f[key]) for f in per_fold]]
        },
    }
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    return report
