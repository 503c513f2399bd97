"""``python -m ml second-look``: does the same network, looking again at a zoomed crop around
the lesion it found, classify and outline it better?

Issue 20 asks for a closer look at the lesion. The crop stage (:mod:`ml.training.crop_stage`)
adds a second classifier; this asks what the model already has can do, with no new weights:
the :class:`~ml.inference.Analyzer` (the worker's own path, one look) analyses the scan, then
a square crop around the lesion box it predicted (the box's longer side plus ``margin`` of it
on each side), cut from the full-resolution scan or, with ``detail``, from the model input a
worker stores, stretched back to the scan's size. The second pass's class logits are
averaged with the first's; a scan without a predicted lesion keeps its first pass.

Measured per margin (:data:`MARGINS`): malignant-vs-benign AUC per image and per patient (its
most suspicious image) with 95% bootstrap intervals of the paired difference by patient; the
recall per class and ECE of the averaged logits (every image, normals included: a normal's
false lesion is looked at again too); and Dice if the crop's outline were pasted back inside
the crop (the Analyzer's option, ``second_look`` in ``model.json``, keeps the whole scan's
outline). The "validation's choice" of margin is made on the ``--fit`` parts, "none"
included, and reported beside every margin's figures on the ``--test`` parts.

Verdict (``ml/reports/notes.md``, the model card): not adopted; it raised AUC with BUSI and
BrEaST-Lesions_USG held out and lowered it with BUS-UCLM held out.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ml import metrics
from ml.config import CLASSES, REPO_DIR
from ml.metrics import MALIGNANT, NORMAL
from ml.training.crop_stage import compare
from ml.training.site_curve import source_groups
from ml.training.sources import get_source, load_image, load_mask, read_manifest
from ml.training.splits import load_split
from ml.zoom import crop_extent, paste, square_crop

logger = logging.getLogger(__name__)

CACHE_DIR = REPO_DIR / "var" / "second_look"
# Context around the predicted lesion box, as a fraction of its longer side on each side.
MARGINS = (0.1, 0.25, 0.4, 0.6)


def part_paths(part: str) -> tuple[str, list[str]]:
    """``source:split`` (train / val / test, or ``all`` for every used image) -> its paths."""
    source, _, split = part.partition(":")
    if split == "all":
        return source, sorted(source_groups(source))
    return source, list(load_split(source)[split])


def _dice(truth: np.ndarray | None, mask: np.ndarray) -> float:
    """Dice against a lesion's expert mask; NaN for normals and unoutlined lesions."""
    if truth is None:
        return float("nan")
    return float(metrics.dice_per_image(truth[None], mask[None])[0])


def _stored_detail(image: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    from ml.model_input import resize_for_model

    height, width = image.shape[:2]
    squeezed = resize_for_model(np.ascontiguousarray(image[..., :3]), side)
    return np.asarray(Image.fromarray(squeezed).resize((width, height), Image.BILINEAR))


def score_part(
    analyzer,
    part: str,
    margins: tuple[float, ...] = MARGINS,
    *,
    detail: int | None = None,
    cache: bool = True,
) -> dict:
    """Both passes over a part's images: labels, groups, first-pass logits and Dice, and per
    margin the second pass's logits (the first's where nothing was found) and pasted Dice.

    ``detail``: None crops the full-resolution scan; a side S crops the scan as the worker
    stores it for the network (squeezed to S x S, :func:`ml.model_input.resize_for_model`),
    stretched back to the scan's size: the detail a crop has without the original.
    """
    source, paths = part_paths(part)
    name = part.replace(":", "-") + ("" if detail is None else f"-detail{detail}")
    path = CACHE_DIR / analyzer.model_version / f"{name}.npz"
    if cache and path.is_file():
        with np.load(path, allow_pickle=False) as data:
            if tuple(data["margins"]) == tuple(margins):
                return {key: data[key] for key in data.files}
    root = get_source(source).root()
    records = {r.path: r for r in read_manifest(source, root)}
    group_of = source_groups(source)
    rows: dict[str, list] = {
        k: []
        for k in ("labels", "groups", "logits", "dice", "has_box", "second", "dice2")
    }
    for p in paths:
        record = records[p]
        image = load_image(root, record)
        first = analyzer.analyze([image])[0]
        truth = (
            load_mask(root, record, (image.shape[1], image.shape[0]))
            if record.has_segmentation and record.label != "normal"
            else None
        )

        cropped = image if detail is None else _stored_detail(image, detail)
        second, second_dice = [], []
        for margin in margins:
            if first.bbox is None:
                second.append(first.class_logits)
                second_dice.append(_dice(truth, first.lesion_mask))
                continue
            extent = crop_extent(first.bbox, margin)
            crop = square_crop(cropped, first.bbox, margin, extent)
            again = analyzer.analyze([crop])[0]
            second.append(again.class_logits)
            second_dice.append(
                _dice(truth, paste(first.lesion_mask, again.lesion_mask, first.bbox))
            )
        rows["labels"].append(record.class_index)
        rows["groups"].append(group_of.get(p, p))
        rows["logits"].append(first.class_logits)
        rows["dice"].append(_dice(truth, first.lesion_mask))
        rows["has_box"].append(first.bbox is not None)
        rows["second"].append(second)
        rows["dice2"].append(second_dice)
    scored = {key: np.asarray(values) for key, values in rows.items()}
    scored["second"] = scored["second"].transpose(1, 0, 2)  # (margins, N, 3)
    scored["dice2"] = scored["dice2"].T  # (margins, N)
    scored["margins"] = np.asarray(margins, np.float64)
    scored["sources"] = np.asarray([source] * len(paths))
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **scored)
    logger.info("%s: %d images scored twice", part, len(paths))
    return scored


def merge(parts: list[dict]) -> dict:
    merged = {
        key: np.concatenate(
            [p[key] for p in parts], axis=1 if key in ("second", "dice2") else 0
        )
        for key in parts[0]
        if key != "margins"
    }
    merged["margins"] = parts[0]["margins"]
    return merged


def summarise(scored: dict, margin_index: int | None, bias, temperature: float) -> dict:
    """Figures of the first pass (``margin_index`` None) or of both passes averaged."""
    logits = scored["logits"]
    dice = scored["dice"]
    if margin_index is not None:
        logits = (logits + scored["second"][margin_index]) / 2
        dice = scored["dice2"][margin_index]
    probabilities = metrics.softmax(logits + np.asarray(bias), temperature)
    labels = scored["labels"]
    lesion = labels != NORMAL
    recall = metrics.recalls(labels, probabilities.argmax(axis=1))
    return {
        "auc_mb": float(
            metrics.malignant_vs_benign_auc(labels[lesion], probabilities[lesion])
        ),
        "recall": {name: float(recall[c]) for c, name in enumerate(CLASSES)},
        "ece": float(metrics.expected_calibration_error(labels, probabilities)),
        "dice": float(np.nanmean(dice[lesion])),
        "p_malignant": probabilities[:, MALIGNANT],
    }


def judge(
    analyzer,
    fit: list[str],
    test: list[str],
    margins=MARGINS,
    detail: int | None = None,
) -> dict:
    """Choose the margin on ``fit`` (by malignant-vs-benign AUC; "none" when no margin beats
    the first pass), then report every margin and the choice on ``test``."""
    bias, temperature = analyzer.class_bias, analyzer.temperature
    report: dict = {
        "model": analyzer.model_version,
        "margins": list(margins),
        "crops_from": "full resolution"
        if detail is None
        else f"{detail} px model input",
    }
    fit_scored = merge([score_part(analyzer, p, margins, detail=detail) for p in fit])
    options: list[int | None] = [None, *range(len(margins))]
    fit_rows = {
        "none" if i is None else str(margins[i]): summarise(
            fit_scored, i, bias, temperature
        )
        for i in options
    }
    chosen = max(fit_rows, key=lambda name: fit_rows[name]["auc_mb"])
    report["fit"] = {"parts": fit, **_rows(fit_rows)}
    report["chosen"] = chosen
    test_scored = merge([score_part(analyzer, p, margins, detail=detail) for p in test])
    rows = {
        "none" if i is None else str(margins[i]): summarise(
            test_scored, i, bias, temperature
        )
        for i in options
    }
    report["test"] = {"parts": test, **_rows(rows)}
    lesion = test_scored["labels"] != NORMAL
    report["test"]["paired"] = {
        name: compare(
            test_scored["labels"][lesion],
            test_scored["groups"][lesion],
            rows["none"]["p_malignant"][lesion],
            row["p_malignant"][lesion],
        )
        for name, row in rows.items()
        if name != "none"
    }
    report["test"]["images"] = len(test_scored["labels"])
    report["test"]["with_box"] = float(test_scored["has_box"][lesion].mean())
    return report


def _rows(rows: dict) -> dict:
    return {
        "rows": {
            name: {k: v for k, v in row.items() if k != "p_malignant"}
            for name, row in rows.items()
        }
    }


def format_report(report: dict) -> str:
    lines = [
        f"{report['model']} (crops from the {report['crops_from']}): margin chosen on {', '.join(report['fit']['parts'])}: {report['chosen']}"
    ]
    for side in ("fit", "test"):
        lines.append(f"{side} ({', '.join(report[side]['parts'])}):")
        for name, row in report[side]["rows"].items():
            recall = " / ".join(f"{v:.3f}" for v in row["recall"].values())
            line = (
                f"  {name:>5}: AUC m|b {row['auc_mb']:.3f}  recall n/b/m {recall}  "
                f"ECE {row['ece']:.3f}  Dice {row['dice']:.3f}"
            )
            paired = report[side].get("paired", {}).get(name)
            if paired:
                low, high = paired["auc_difference_ci95"]
                line += (
                    f"  (AUC diff 95% {low:+.3f} to {high:+.3f}; per patient "
                    f"{paired['patient_auc_whole']:.3f} -> {paired['patient_auc_fused']:.3f})"
                )
            lines.append(line)
    return "\n".join(lines)


def run(
    weights: Path,
    fit: list[str],
    test: list[str],
    out: Path | None,
    detail: int | None = None,
) -> dict:
    import dataclasses
    import json

    from ml.inference import Analyzer

    loaded = Analyzer.load(weights)
    # The first pass is the whole scan's alone, whatever model.json says: the margins here
    # are the second looks being judged.
    analyzer = Analyzer(
        loaded._model, dataclasses.replace(loaded.meta, second_look=None)
    )
    report = judge(analyzer, fit, test, detail=detail)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1, default=float) + "\n")
    return report
