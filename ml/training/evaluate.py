"""Evaluation through the same :class:`~ml.inference.Analyzer` the workers use.

Masks are compared at each image's original resolution. Intervals are 95% bootstrap
intervals that resample patients (or BUSI's duplicate groups), not images.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ml import metrics
from ml.config import CLASSES
from ml.training.sources import (
    SOURCES,
    get_source,
    load_image,
    load_mask,
    read_manifest,
)

logger = logging.getLogger(__name__)

# Targets of issue 9, on the pooled test splits of the three sources.
TARGETS = {
    "recall_normal": (">=", 0.85),
    "recall_benign": (">=", 0.85),
    "recall_malignant": (">=", 0.85),
    "dice_lesion_mean": (">=", 0.78),
    "ece": ("<=", 0.05),
}
REPORTED = (
    "n",
    "recall_normal",
    "recall_benign",
    "recall_malignant",
    "auc_malignant_vs_benign",
    "auc_malignant_vs_rest",
    "dice_lesion_mean",
    "normal_with_lesion_over_1pct",
    "ece",
    "in_distribution_rate",
)


def collect(analyzer, source: str, paths: list[str], batch_size: int = 8) -> dict:
    """Run the analyzer over a source's ``paths``; Dice at each image's own resolution."""
    from ml.training.arrays import group_names

    root = get_source(source).root()
    records = {record.path: record for record in read_manifest(source, root)}
    rows: dict[str, list] = {
        key: []
        for key in ("labels", "logits", "probabilities", "dice", "area", "ood_score")
    }
    for start in range(0, len(paths), batch_size):
        chunk = [records[p] for p in paths[start : start + batch_size]]
        images = [load_image(root, record) for record in chunk]
        for record, image, result in zip(
            chunk, images, analyzer.analyze(images), strict=True
        ):
            truth = load_mask(root, record, (image.shape[1], image.shape[0]))
            rows["labels"].append(record.class_index)
            rows["logits"].append(result.class_logits)
            rows["probabilities"].append([result.probabilities[c] for c in CLASSES])
            rows["dice"].append(
                metrics.dice_per_image(truth[None], result.lesion_mask[None])[0]
                if record.has_segmentation
                else np.nan  # no known outline: left out of Dice
            )
            rows["area"].append(result.lesion_area_fraction)
            rows["ood_score"].append(
                np.nan if result.ood_score is None else result.ood_score
            )
    results = {key: np.asarray(values) for key, values in rows.items()}
    results["groups"] = np.asarray(group_names(source, paths, records))
    results["sources"] = np.asarray([source] * len(paths))
    results["threshold"] = (
        analyzer.ood.threshold if analyzer.ood is not None else np.nan
    )
    return results


def merge(parts: list[dict]) -> dict:
    merged = {
        key: np.concatenate([part[key] for part in parts])
        for key in parts[0]
        if key != "threshold"
    }
    merged["threshold"] = parts[0]["threshold"]
    return merged


def summarise(results: dict, indices: np.ndarray | None = None) -> dict:
    """The measures over ``indices`` of ``collect``'s results (all of them by default)."""
    if indices is None:
        indices = np.arange(len(results["labels"]))
    summary = metrics.summary(
        results["labels"][indices],
        results["probabilities"][indices],
        results["dice"][indices],
        results["area"][indices],
    )
    scores = results["ood_score"][indices]
    summary["in_distribution_rate"] = (
        float((scores <= results["threshold"]).mean())
        if not np.isnan(results["threshold"])
        else float("nan")
    )
    return summary


def with_intervals(results: dict, rounds: int) -> dict:
    """Point estimates and group-bootstrap 95% intervals of the reported measures."""
    point = summarise(results)
    intervals = metrics.bootstrap_intervals(
        lambda idx: summarise(results, idx), results["groups"], rounds=rounds
    )
    return {
        key: {"value": point[key], "ci95": intervals.get(key)}
        for key in REPORTED
        if key in point
    }


def ood_corpus_scores(analyzer) -> dict[str, float]:
    from ml.training.ood_corpus import corpus

    images = corpus()
    return {
        name: result.ood_score
        for name, result in zip(
            images, analyzer.analyze(list(images.values())), strict=True
        )
    }


def plot_all(results: dict, temperature: float, out_dir: Path) -> list[str]:
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
        colour = "black" if value < matrix.max() / 2 else "white"
        ax.text(j, i, str(value), ha="center", va="center", color=colour)
    ax.set(
        xticks=range(3),
        yticks=range(3),
        xticklabels=CLASSES,
        yticklabels=CLASSES,
        xlabel="predicted",
        ylabel="true",
        title="Confusion matrix (pooled test)",
    )
    save(fig, "confusion_matrix.png")

    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    lesion = labels != metrics.NORMAL
    for source in np.unique(results["sources"]):
        chosen = lesion & (results["sources"] == source)
        positives = labels[chosen] == metrics.MALIGNANT
        if positives.any() and not positives.all():
            fpr, tpr, _ = roc_curve(positives, probabilities[chosen, metrics.MALIGNANT])
            ax.plot(fpr, tpr, label=f"{source} (AUC {np.trapezoid(tpr, fpr):.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        title="Malignant vs benign ROC (test)",
    )
    ax.legend(loc="lower right", fontsize=8)
    save(fig, "roc_curves.png")

    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    for name, probs in (
        ("before (T=1)", metrics.softmax(results["logits"])),
        (f"after (T={temperature:.2f})", probabilities),
    ):
        shown = [b for b in metrics.reliability_bins(labels, probs) if b["count"] >= 3]
        centres = [b["confidence"] for b in shown]
        accuracy = [b["accuracy"] for b in shown]
        ece = metrics.expected_calibration_error(labels, probs)
        ax.plot(centres, accuracy, "o-", label=f"{name}, ECE {ece:.3f}")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(
        xlabel="confidence",
        ylabel="accuracy",
        title="Reliability (pooled test)",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(loc="upper left", fontsize=8)
    save(fig, "reliability_diagram.png")

    fig, ax = plt.subplots(figsize=(4.5, 3.6))
    ax.hist(
        results["dice"][lesion],
        bins=np.linspace(0, 1, 21),
        color="tab:orange",
        edgecolor="white",
    )
    ax.set(
        xlabel="Dice per lesion image",
        ylabel="images",
        title=f"Dice (pooled test, mean {results['dice'][lesion].mean():.3f})",
    )
    save(fig, "dice_histogram.png")
    return written


def plot_ood(
    test_scores: np.ndarray, corpus_scores: dict, threshold: float, out_dir: Path
) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    values = np.log10(np.concatenate([test_scores, list(corpus_scores.values())]) + 1)
    bins = np.linspace(values.min(), values.max(), 40)
    ax.hist(
        np.log10(test_scores + 1), bins=bins, alpha=0.7, label="test scans (3 sources)"
    )
    ax.hist(
        np.log10(np.asarray(list(corpus_scores.values())) + 1),
        bins=bins,
        alpha=0.7,
        label="not ultrasound",
    )
    ax.axvline(np.log10(threshold + 1), color="black", linestyle=":", label="threshold")
    ax.set(
        xlabel="log10(1 + Mahalanobis score)",
        ylabel="images",
        title="Out-of-distribution score",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "ood_scores.png", dpi=110)
    plt.close(fig)
    return "ood_scores.png"


def evaluate(
    weights: Path | None,
    out_dir: Path,
    *,
    sources: tuple[str, ...] = tuple(SOURCES),
    rounds: int = 1000,
) -> dict:
    from ml.inference import Analyzer
    from ml.training.splits import load_split

    analyzer = Analyzer.load(weights)
    per_source = {
        source: collect(analyzer, source, load_split(source)["test"])
        for source in sources
    }
    pooled = merge(list(per_source.values()))
    corpus_scores = ood_corpus_scores(analyzer)
    threshold = analyzer.ood.threshold if analyzer.ood is not None else float("nan")
    flagged = {name: bool(score > threshold) for name, score in corpus_scores.items()}
    point = summarise(pooled)
    report = {
        "model_version": analyzer.model_version,
        "second_look": analyzer.second_look,
        "temperature": analyzer.temperature,
        "class_bias": analyzer.class_bias.tolist(),
        "image_size": analyzer.image_size,
        "test_images": {s: len(r["labels"]) for s, r in per_source.items()},
        "pooled_test": with_intervals(pooled, rounds),
        "per_source_test": {
            s: with_intervals(r, rounds) for s, r in per_source.items()
        },
        "uncalibrated_ece_pooled": metrics.expected_calibration_error(
            pooled["labels"], metrics.softmax(pooled["logits"])
        ),
        "ood": {
            "threshold": threshold,
            # The archive's own threshold (97.5th percentile of the validation images'
            # scores); ``threshold`` is the caution's when model.json re-sets it.
            "validation_threshold": analyzer.meta.ood_threshold,
            "corpus_images": len(corpus_scores),
            "corpus_flagged_rate": float(np.mean(list(flagged.values()))),
            "corpus_not_flagged": sorted(name for name, f in flagged.items() if not f),
            "test_in_distribution_rate": point["in_distribution_rate"],
        },
        "targets": {
            key: {
                "op": op,
                "target": target,
                "value": point[key],
                "met": bool(
                    point[key] >= target if op == ">=" else point[key] <= target
                ),
            }
            for key, (op, target) in TARGETS.items()
        },
        "training": analyzer.meta.training,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    report["plots"] = plot_all(pooled, analyzer.temperature, out_dir) + [
        plot_ood(pooled["ood_score"], corpus_scores, threshold, out_dir)
    ]
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    logger.info("pooled test: %s", json.dumps(point))
    return report
