"""Writes ``ml/MODEL_CARD.md`` from an evaluation report; every figure comes from the report."""

from __future__ import annotations

import json
from pathlib import Path

from ml.config import PACKAGE_DIR

LABELS = {
    "recall_normal": "Recall, normal",
    "recall_benign": "Recall, benign",
    "recall_malignant": "Recall, malignant",
    "mean_recall_benign_malignant": "Mean recall, benign + malignant",
    "balanced_accuracy": "Balanced accuracy (mean recall of 3 classes)",
    "accuracy": "Accuracy",
    "auc_malignant_vs_rest": "ROC AUC, malignant vs rest",
    "dice_lesion_mean": "Dice, lesion images (mean per image)",
    "dice_lesion_median": "Dice, lesion images (median)",
    "lesions_missed_dice_under_0_05": "Lesion images with Dice < 0.05 (count)",
    "normal_with_lesion_over_1pct": "Normal images with a predicted lesion > 1% of the image",
    "ece": "Expected calibration error (10 bins)",
}


def _bias(report: dict) -> str:
    bias = report.get("class_bias", [0.0, 0.0, 0.0])
    return ", ".join(
        f"{name} {value:+.2f}"
        for name, value in zip(("normal", "benign", "malignant"), bias, strict=True)
    )


def _row(key: str, report: dict) -> str:
    value = report["metrics"][key]
    low, high = report["ci95"].get(key, (float("nan"), float("nan")))
    target = report["targets"].get(key)
    target_text = (
        f"{target['op']} {target['target']:.2f} — {'met' if target['met'] else '**missed**'}"
        if target
        else ""
    )
    if isinstance(value, int):
        return f"| {LABELS[key]} | {value} | {low:.0f} – {high:.0f} | {target_text} |"
    return f"| {LABELS[key]} | {value:.3f} | {low:.3f} – {high:.3f} | {target_text} |"


def write_model_card(report: dict, report_dir: Path, card_path: Path) -> None:
    training = report.get("training", {})
    relative = (
        report_dir.relative_to(card_path.parent)
        if report_dir.is_relative_to(card_path.parent)
        else report_dir
    )
    cv_path = report_dir / "cv.json"
    cv_section = "Not run for the committed weights (see Limits)."
    if cv_path.is_file():
        cv = json.loads(cv_path.read_text())
        lines = ["| measure | mean | sd | folds |", "|---|---:|---:|---|"]
        for key, values in cv["folds_metrics"].items():
            lines.append(
                f"| {LABELS.get(key, key)} | {values['mean']:.3f} | {values['sd']:.3f} | "
                f"{', '.join(f'{v:.2f}' for v in values['values'])} |"
            )
        cv_section = (
            f"{cv['description']}\n\n"
            + "\n".join(lines)
            + f"\n\nCommand: `{cv['command']}`"
        )
    rows = "\n".join(_row(key, report) for key in LABELS if key in report["metrics"])
    notes_path = report_dir / "notes.md"
    notes = notes_path.read_text().strip() if notes_path.is_file() else "None recorded."
    plots = "\n".join(
        f"![{name}]({relative}/{name})" for name in report.get("plots", [])
    )
    text = f"""# Model card: {report["model_version"]}

BUSNet: one EfficientNet-Lite0 encoder (ImageNet-pretrained, Apache-2.0 weights from
`shared/weights/efficientnet_lite0_imagenet`) shared by a 3-class classification head
(normal / benign / malignant) and a U-Net-style lesion decoder. Input: the whole scan resized
to {report["image_size"]}x{report["image_size"]} RGB. Outputs: calibrated class probabilities
(per-class logit offsets {_bias(report)} for balanced recall, then temperature
{report["temperature"]:.3f}; both fitted on the validation split), a lesion mask at the
scan's resolution, Grad-CAM (classification) and Seg-Grad-CAM (segmentation) heatmaps.
Weights: `ml/weights/weights.npz` (float16), `ml/weights/model.json`; the version is the model
name plus the first 12 hex digits of the weights' sha256.

## Intended use
Decision support for trained radiologists reading breast ultrasound: a second look, a
worklist ordered by suspicion, and a starting outline of the lesion. **It is not a
diagnosis** and must not be used without a radiologist's review. It was not validated on
this hospital's patients or machines; the agreement monitor in the portal exists to watch that.

## Data
BUSI (Al-Dhabyani et al., Data in Brief 2020; 780 images, Baheya Hospital, Cairo, 2018;
133 normal, 437 benign, 210 malignant), read in place from `shared/data/busi`. Multiple
masks of one image are combined with OR. Licence not clearly established (research use, cite
the paper).

Split (`ml/splits/busi.json`, seed fixed, committed): near-duplicate images were grouped first
(identical pixels, the dataset's candidate list, three pairs its README confirms visually, and
48x48 thumbnail correlation >= 0.97 or difference-hash distance <= 24 with correlation >= 0.93),
then whole groups were dealt to train / val / test stratified by class (about 70 / 15 / 15).
No group crosses splits (a test checks it). Eight groups mix classes (e.g. the identical
benign 433 / malignant 145): their labels conflict and they stay in one split, as labelled.
Test split: {report["test_images"]} images.

## Training
`python -m ml train` — {training.get("epochs_run", "?")} epochs run, best epoch {training.get("best_epoch", "?")} by
validation score (balanced accuracy + mean lesion Dice); {training.get("train_images", "?")} training images, batch
{training.get("batch_size", "?")}, AdamW, encoder frozen for the first epochs then fine-tuned with cosine decay
(learning rate {training.get("learning_rate", "?")}), encoder batch-norm statistics frozen, class-weighted
cross-entropy + (BCE + soft Dice) for the mask, augmentation: flips, small rotations, zoom,
shifts, gain / offset / gamma and speckle-like noise. Seed {training.get("seed", "?")}. Per-epoch metrics:
`ml/reports/training_log.csv`.

## Results on the test split
95% intervals: percentile bootstrap over test images (1000 resamples). Masks are scored at
each image's original resolution through the same `Analyzer` the workers use.
Expected calibration error before temperature scaling: {report["uncalibrated_ece"]:.3f}.

| measure | value | 95% CI | target |
|---|---:|---|---|
{rows}

{plots}

### Notes on this run
{notes}

### Cross-validation
{cv_section}

## Limits
- One public dataset from one hospital and one period; ultrasound machines, operators and
  populations elsewhere differ. The test split is small ({report["test_images"]} images), so the intervals are wide.
- BUSI images carry burned-in calipers, text and colour Doppler boxes; the network may use
  them. Grad-CAM lets a reader see when it does.
- Labels are biopsy- or opinion-based as published; some duplicates carry conflicting labels.
- Near-duplicate grouping is automatic: a few same-scan pairs may remain split, and a few
  different scans may be grouped.

## Reproduce
```
python -m ml split      # rebuilds ml/splits/busi.json (already committed)
python -m ml train      # writes ml/weights/ (about 30-40 min on 2 CPU cores)
python -m ml evaluate   # writes ml/reports/ and this card
```
or `make train evaluate`.
"""
    card_path.write_text(text)


if __name__ == "__main__":  # regenerate the card from the committed report
    report_dir = PACKAGE_DIR / "reports"
    write_model_card(
        json.loads((report_dir / "metrics.json").read_text()),
        report_dir,
        PACKAGE_DIR / "MODEL_CARD.md",
    )
