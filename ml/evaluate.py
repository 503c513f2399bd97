"""Evaluation on the committed test split: metrics with bootstrap intervals, plots, model card.

Masks are compared at each image's original resolution, through the same :class:`Analyzer`
the workers use, so the figures describe what the product does.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import numpy as np

from ml import metrics
from ml.config import CLASSES

logger = logging.getLogger(__name__)

TARGETS = {
    "recall_normal": (">=", 0.85),
    "recall_benign": (">=", 0.85),
    "recall_malignant": (">=", 0.85),
    "mean_recall_benign_malignant": (">=", 0.88),
    "auc_malignant_vs_rest": (">=", 0.93),
    "dice_lesion_mean": (">=", 0.75),
    "normal_with_lesion_over_1pct": ("<=", 0.10),
    "ece": ("<=", 0.05),
}


def collect(analyzer, data_dir: Path, paths: list[str]) -> dict[str, np.ndarray]:
    """Run the analyzer over ``paths``; per-image dice is computed at full resolution."""
    from ml.data import load_image, load_mask, read_manifest

    records = {record.path: record for record in read_manifest(data_dir)}
    labels, logits, probabilities, dice, area = [], [], [], [], []
    for start in range(0, len(paths), 8):
        chunk = [records[p] for p in paths[start : start + 8]]
        images = [load_image(data_dir, record) for record in chunk]
        for record, result in zip(chunk, analyzer.analyze(images), strict=True):
            truth = load_mask(data_dir, record)
            labels.append(record.class_index)
            logits.append(result.class_logits)
            probabilities.append([result.probabilities[name] for name in CLASSES])
            dice.append(
                metrics.dice_per_image(truth[None], result.lesion_mask[None])[0]
            )
            area.append(result.lesion_area_fraction)
    return {
        "labels": np.asarray(labels),
        "logits": np.asarray(logits),
        "probabilities": np.asarray(probabilities),
        "dice": np.asarray(dice),
        "area": np.asarray(area),
    }


def summarise(
    results: dict[str, np.ndarray], indices: np.ndarray | None = None
) -> dict:
    """The measures of ``collect``'s results, over ``indices`` (a bootstrap resample)."""
    if indices is None:
        indices = np.arange(len(results["labels"]))
    return metrics.summary(
        results["labels"][indices],
        results["probabilities"][indices],
        results["dice"][indices],
        results["area"][indices],
    )


def plot_all(
    results: dict[str, np.ndarray], temperature: float, out_dir: Path
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix, roc_curve

    out_dir.mkdir(parents=True, exist_ok=True)
    labels, probabilities = results["labels"], results["probabilities"]
    written = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        written.append(name)

    matrix = confusion_matrix(
        labels, probabilities.argmax(1), labels=range(len(CLASSES))
    )
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            str(value),
            ha="center",
            va="center",
            color="black" if value < matrix.max() / 2 else "white",
        )
    ax.set(
        xticks=range(3),
        yticks=range(3),
        xticklabels=CLASSES,
        yticklabels=CLASSES,
        xlabel="predicted",
        ylabel="true",
        title="Confusion matrix (test)",
    )
    save(fig, "confusion_matrix.png")

    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    for c, name in enumerate(CLASSES):
        positives = labels == c
        if positives.any() and not positives.all():
            fpr, tpr, _ = roc_curve(positives, probabilities[:, c])
            auc = np.trapezoid(tpr, fpr)
            ax.plot(fpr, tpr, label=f"{name} vs rest (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(
        xlabel="false positive rate", ylabel="true positive rate", title="ROC (test)"
    )
    ax.legend(loc="lower right", fontsize=8)
    save(fig, "roc_curves.png")

    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    uncalibrated = metrics.softmax(results["logits"])
    for name, probs in (
        ("before (T=1)", uncalibrated),
        (f"after (T={temperature:.2f})", probabilities),
    ):
        confidence, correct = probs.max(1), probs.argmax(1) == labels
        edges = np.linspace(0, 1, 11)
        centres, accuracy = [], []
        for low, high in itertools.pairwise(edges):
            selected = (confidence > low) & (confidence <= high)
            if selected.sum() >= 3:
                centres.append(confidence[selected].mean())
                accuracy.append(correct[selected].mean())
        ax.plot(
            centres,
            accuracy,
            "o-",
            label=f"{name}, ECE {metrics.expected_calibration_error(labels, probs):.3f}",
        )
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(
        xlabel="confidence",
        ylabel="accuracy",
        title="Reliability (test)",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(loc="upper left", fontsize=8)
    save(fig, "reliability_diagram.png")

    fig, ax = plt.subplots(figsize=(4.5, 3.6))
    lesion = labels != metrics.NORMAL
    ax.hist(
        results["dice"][lesion],
        bins=np.linspace(0, 1, 21),
        color="tab:orange",
        edgecolor="white",
    )
    ax.set(
        xlabel="Dice per lesion image",
        ylabel="images",
        title=f"Dice (test, mean {results['dice'][lesion].mean():.3f})",
    )
    save(fig, "dice_histogram.png")
    return written


def evaluate(
    weights: Path,
    data_dir: Path,
    split_path: Path,
    out_dir: Path,
    *,
    rounds: int = 1000,
) -> dict:
    from ml.data import load_split
    from ml.inference import Analyzer

    analyzer = Analyzer.load(weights)
    test_paths = load_split(split_path)["test"]
    results = collect(analyzer, data_dir, test_paths)
    point = summarise(results)
    intervals = metrics.bootstrap_intervals(
        lambda idx: summarise(results, idx), len(test_paths), rounds=rounds
    )
    report = {
        "model_version": analyzer.model_version,
        "temperature": analyzer.temperature,
        "image_size": analyzer.image_size,
        "class_bias": analyzer.class_bias.tolist(),
        "split": split_path.name,
        "test_images": len(test_paths),
        "metrics": point,
        "ci95": intervals,
        "uncalibrated_ece": metrics.expected_calibration_error(
            results["labels"], metrics.softmax(results["logits"])
        ),
        "targets": {
            k: {
                "op": op,
                "target": v,
                "met": bool(point[k] >= v if op == ">=" else point[k] <= v),
            }
            for k, (op, v) in TARGETS.items()
        },
        "training": analyzer.meta.training,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    report["plots"] = plot_all(results, analyzer.temperature, out_dir)
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    logger.info("test metrics: %s", json.dumps(point))
    return report
