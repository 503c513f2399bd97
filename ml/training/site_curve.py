"""``python -m ml site-curve``: how a site's own calibration improves with its signed reads.

For each leave-one-source-out fold, the held-out source plays the new site: its images are
scored once by the fold's model (raw logits, cached), then for k = 25 / 50 / 100 / 200 reads
drawn by patient (several draws) a :class:`ml.site_calibration.SiteCalibration` is fitted on
those k and judged on the rest of the source: ECE, recall per class and the malignant
sensitivity achieved at the target. Without a fold model the committed model scores the
source, and the report says so (that source was then in its training).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ml import metrics
from ml.config import CLASSES, REPO_DIR
from ml.metrics import MALIGNANT
from ml.site_calibration import SiteCalibration, fit_site_calibration
from ml.training.sources import SOURCES, load_image, read_manifest
from ml.training.splits import SPLITS, load_split

logger = logging.getLogger(__name__)

CACHE_DIR = REPO_DIR / "var" / "site_curve"
DEFAULT_K = (25, 50, 100, 200)


def source_groups(source: str) -> dict[str, str]:
    """Path -> group (patient, or BUSI's duplicate group) for every used image of a source."""
    split = load_split(source)
    paths = sorted(path for part in SPLITS for path in split[part])
    payload = json.loads((REPO_DIR / "ml" / "splits" / f"{source}.json").read_text())
    records = {r.path: r for r in read_manifest(source)}
    group_of = {path: records[path].patient or path for path in paths}
    if source == "busi":
        for members in payload.get("groups", []):
            for path in members:
                group_of[path] = members[0]
    return group_of


def score_source(weights: Path, source: str, *, batch_size: int = 8) -> dict:
    """Raw logits and OOD scores of a source's used images and its Doppler frames, cached
    per model version."""
    from ml.inference import Analyzer
    from ml.weights_io import read_meta

    version = read_meta(weights).version
    cache = CACHE_DIR / version / f"{source}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    root = SOURCES[source].root()
    group_of = source_groups(source)
    records = [
        r
        for r in read_manifest(source, root)
        if r.path in group_of or r.excluded == "colour Doppler overlay"
    ]
    analyzer = Analyzer.load(weights)
    logits, ood = [], []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        for result in analyzer.analyze([load_image(root, r) for r in chunk]):
            logits.append(result.class_logits)
            ood.append(np.nan if result.ood_score is None else result.ood_score)
        logger.info("%s: %d/%d scored", source, start + len(chunk), len(records))
    out = {
        "paths": np.array([r.path for r in records]),
        "labels": np.array([r.class_index for r in records]),
        "groups": np.array([group_of.get(r.path, r.path) for r in records]),
        "doppler": np.array([r.excluded == "colour Doppler overlay" for r in records]),
        "logits": np.asarray(logits, np.float64),
        "ood_score": np.asarray(ood, np.float64),
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def _draw_by_patient(
    groups: np.ndarray, k: int, rng: np.random.Generator
) -> np.ndarray:
    """Indices of whole patients, in random order, until at least ``k`` images (cut at k)."""
    names = np.unique(groups)
    chosen: list[int] = []
    for name in rng.permutation(names):
        chosen.extend(np.nonzero(groups == name)[0].tolist())
        if len(chosen) >= k:
            break
    return np.asarray(chosen[:k])


def curve(
    logits: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    *,
    ks: tuple[int, ...] = DEFAULT_K,
    draws: int = 20,
    target_sensitivity: float = 0.9,
    baseline: SiteCalibration | None = None,
    seed: int = 0,
) -> dict:
    """Per k, median and 10th-90th percentile over draws of the measures on the rest."""
    rng = np.random.default_rng(seed)
    rows: dict = {}
    if baseline is not None:
        probabilities = baseline.probabilities(logits)
        flagged = baseline.suspicious(probabilities)
        recall = metrics.recalls(labels, probabilities.argmax(1))
        rows["training"] = {
            "ece": metrics.expected_calibration_error(labels, probabilities),
            **{f"recall_{n}": float(recall[c]) for c, n in enumerate(CLASSES)},
            "sensitivity": float(flagged[labels == MALIGNANT].mean()),
            "n_test": len(labels),
        }
    for k in ks:
        if k >= len(labels) - 20:
            continue
        samples: dict[str, list[float]] = {}
        for _ in range(draws):
            fit = _draw_by_patient(groups, k, rng)
            rest = np.setdiff1d(np.arange(len(labels)), fit)
            # The rest must not share a patient with the fitted reads.
            rest = rest[~np.isin(groups[rest], groups[fit])]
            calibration = fit_site_calibration(
                logits[fit], labels[fit], target_sensitivity=target_sensitivity
            )
            probabilities = calibration.probabilities(logits[rest])
            truth = labels[rest]
            recall = metrics.recalls(truth, probabilities.argmax(1))
            flagged = calibration.suspicious(probabilities)
            values = {
                "ece": metrics.expected_calibration_error(truth, probabilities),
                **{f"recall_{n}": float(recall[c]) for c, n in enumerate(CLASSES)},
                "sensitivity": float(flagged[truth == MALIGNANT].mean()),
                "threshold_fitted": float(calibration.threshold is not None),
                "n_test": len(rest),
            }
            for key, value in values.items():
                samples.setdefault(key, []).append(value)
        rows[str(k)] = {
            key: {
                "median": float(np.nanmedian(v)),
                "p10": float(np.nanpercentile(v, 10)),
                "p90": float(np.nanpercentile(v, 90)),
            }
            for key, v in samples.items()
        }
        rows[str(k)]["sensitivity_in_0_85_0_95"] = float(
            np.mean([0.85 <= s <= 0.95 for s in samples["sensitivity"]])
        )
    return rows


def site_curve(
    loso_dir: Path | None,
    weights: Path,
    *,
    ks: tuple[int, ...] = DEFAULT_K,
    draws: int = 20,
    seed: int = 0,
) -> dict:
    """Every source as the new site; a fold model where ``loso_dir`` has one."""
    from ml.weights_io import read_meta

    report: dict = {"ks": list(ks), "draws": draws, "seed": seed, "folds": {}}
    for source in SOURCES:
        fold = None if loso_dir is None else Path(loso_dir) / f"without-{source}"
        if fold is not None and (fold / "model.json").is_file():
            model, honest = fold, True
        else:
            model, honest = Path(weights), False
        meta = read_meta(model)
        scored = score_source(model, source)
        used = ~scored["doppler"]
        baseline = SiteCalibration.from_training(
            temperature=meta.temperature, class_bias=meta.class_bias
        )
        report["folds"][source] = {
            "model": meta.version,
            "held_out_in_training": not honest,
            "n": int(used.sum()),
            "patients": len(np.unique(scored["groups"][used])),
            "curve": curve(
                scored["logits"][used],
                scored["labels"][used],
                scored["groups"][used],
                ks=ks,
                draws=draws,
                baseline=baseline,
                seed=seed,
            ),
        }
    if any(f["held_out_in_training"] for f in report["folds"].values()):
        report["note"] = (
            "**No LOSO fold model existed when this was run**, so the committed model scored "
            'every source, and each "held-out" source was in its training: its logits are '
            "better separated than a new hospital's would be. What the curve shows honestly "
            "is how a site calibration moves calibration and the operating point with k; "
            "re-run `python -m ml site-curve --loso DIR` once fold models exist."
        )
    return report


def caution_report(weights: Path, loso_report: Path) -> dict:
    """What can be said of the "unusual for this model" caution without fold models: the
    held-out pass rates the last LOSO run measured at each fold's own threshold, and the
    committed model's pass rates on every source (which it was trained on)."""
    from ml.weights_io import read_meta

    meta = read_meta(weights)
    threshold = meta.caution_threshold or meta.ood_threshold
    rows = []
    if Path(loso_report).is_file():
        for source, fold in json.loads(Path(loso_report).read_text())["folds"].items():
            rate = fold["metrics"].get("in_distribution_rate", {}).get("value")
            rows.append(
                {
                    "model": fold["model_version"],
                    "source": source,
                    "n": fold["images"],
                    "passing_before": rate,
                    "passing_after": None,
                    "note": "LOSO fold (held out); its per-image scores were not kept",
                }
            )
    for source in SOURCES:
        scored = score_source(weights, source)
        used = ~scored["doppler"]
        rows.append(
            {
                "model": meta.version,
                "source": source,
                "n": int(used.sum()),
                "passing_before": float(
                    (scored["ood_score"][used] <= threshold).mean()
                ),
                "passing_after": None,
                "note": "committed model; the source was in its training",
            }
        )
    description = (
        "The Mahalanobis score of `ml/ood.py`, unchanged; shown as a caution, not a verdict "
        f"(threshold {threshold:.2f}, the 97.5th percentile of the validation scores). The "
        "issue asks for a threshold at which >= 95% of each held-out source's scans pass "
        "in every LOSO fold. That needs the fold models' per-image scores on their held-out "
        "source; no fold model existed during this work (the issue-20 LOSO run was "
        "training its first fold), so the threshold was **not** re-set. `model.json` "
        "takes a `caution_threshold` that overrides the archive's (honoured by "
        "`Analyzer`, tested), for when the fold scores exist."
    )
    return {"threshold": threshold, "description": description, "rows": rows}
