"""``python -m ml site-curve``: how a site's own calibration improves with its signed reads.

For each leave-one-source-out fold, the held-out source plays the new site: its images are
scored once by the fold's model (raw logits, cached), then for k = 25 / 50 / 100 / 200 reads
drawn by patient (several draws) a :class:`ml.site_calibration.SiteCalibration` is fitted on
those k and judged on the rest of the source: ECE, recall per class and the malignant
sensitivity achieved at the target. Without a fold model the committed model scores the
source, and the report says so (that source was then in its training).

A fold model's scores of its held-out source are kept in the repository
(``ml/reports/fold_scores/<source>.npz``, :func:`fold_scores`): a few numbers per image, so
the curve and the caution can be measured again, for any calibration format, in a later
session whose machine no longer has the fold model (each takes an hour to train here).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ml import metrics
from ml.config import CLASSES, REPO_DIR
from ml.metrics import MALIGNANT
from ml.site_calibration import (
    FORMAT_VERSION,
    PRIOR_FOLDS,
    PRIOR_STRENGTH,
    PRIOR_STRENGTHS,
    SiteCalibration,
    fit_site_calibration,
)
from ml.training.sources import SOURCES, load_image, read_manifest
from ml.training.splits import SPLITS, load_split

logger = logging.getLogger(__name__)

CACHE_DIR = REPO_DIR / "var" / "site_curve"
FOLD_SCORES_DIR = REPO_DIR / "ml" / "reports" / "fold_scores"
DEFAULT_K = (25, 50, 100, 200)
# Label sets drawn from a fitted calibration's own probabilities per draw, for the ECE a
# perfectly calibrated model would show on the same cases (the estimator's floor).
FLOOR_LABEL_DRAWS = 10
# How the shipped fit's prior is set, recorded in the report (a report made otherwise is
# carried as an ablation, see _earlier_fold).
PRIOR_CHOICE = {"strengths": list(PRIOR_STRENGTHS), "folds": PRIOR_FOLDS}


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
    """Raw logits, OOD scores, predicted lesion areas and boxes (x_min, y_min, x_max, y_max at
    the image's resolution; -1 where no lesion is predicted) of a source's used images and
    its Doppler frames, cached per model version (and second look)."""
    from ml.inference import Analyzer
    from ml.weights_io import read_meta

    meta = read_meta(weights)
    looks = "" if meta.second_look is None else f"-look{meta.second_look['margin']}"
    cache = CACHE_DIR / f"{meta.version}{looks}" / f"{source}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as data:
            if "lesion_box" in data.files:
                return {key: data[key] for key in data.files}
    root = SOURCES[source].root()
    group_of = source_groups(source)
    records = [
        r
        for r in read_manifest(source, root)
        if r.path in group_of or r.excluded == "colour Doppler overlay"
    ]
    analyzer = Analyzer.load(weights)
    logits, ood, area, box = [], [], [], []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        for result in analyzer.analyze([load_image(root, r) for r in chunk]):
            logits.append(result.class_logits)
            ood.append(np.nan if result.ood_score is None else result.ood_score)
            area.append(result.lesion_area_fraction)
            box.append((-1, -1, -1, -1) if result.bbox is None else result.bbox)
        logger.info("%s: %d/%d scored", source, start + len(chunk), len(records))
    out = {
        "paths": np.array([r.path for r in records]),
        "labels": np.array([r.class_index for r in records]),
        "groups": np.array([group_of.get(r.path, r.path) for r in records]),
        "doppler": np.array([r.excluded == "colour Doppler overlay" for r in records]),
        "logits": np.asarray(logits, np.float64),
        "ood_score": np.asarray(ood, np.float64),
        "lesion_area": np.asarray(area, np.float64),
        "lesion_box": np.asarray(box, np.int32),
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def fold_scores(
    loso_dir: Path | None, source: str, *, store: Path = FOLD_SCORES_DIR
) -> dict | None:
    """``source`` scored by its LOSO fold model (:func:`score_source`'s arrays plus the fold
    model's ``model`` version, ``temperature``, ``class_bias`` and ``ood_threshold``).

    Scored by the fold model when ``loso_dir`` holds it, and then written to ``store``
    (replacing an earlier fold model's scores); otherwise read from ``store``; None when
    neither has it."""
    from ml.weights_io import read_meta

    path = Path(store) / f"{source}.npz"
    fold = _fold_dir(loso_dir, source)
    if fold is None:
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    meta = read_meta(fold)
    scored = {
        **score_source(fold, source),
        "model": np.array(meta.version),
        "temperature": np.float64(meta.temperature),
        "class_bias": np.asarray(meta.class_bias, np.float64),
        "ood_threshold": np.float64(
            np.nan if meta.ood_threshold is None else meta.ood_threshold
        ),
        # The second look's margin when the logits are both passes' mean; NaN: one pass.
        "second_look_margin": np.float64(
            np.nan if meta.second_look is None else meta.second_look["margin"]
        ),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **scored)
    return scored


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
    version: int = FORMAT_VERSION,
    prior: SiteCalibration | None = None,
    prior_strength: float | None = None,
) -> dict:
    """Per k, median and 10th-90th percentile over draws of the measures on the rest, for
    calibrations of format ``version`` fitted toward ``prior`` (its strength chosen by the
    drawn reads unless ``prior_strength`` is given; the same draws for every version and
    prior: same seed).

    ``ece_floor`` is the ECE a perfectly calibrated model would show on the same rest: the
    median over :data:`FLOOR_LABEL_DRAWS` label sets drawn from the fit's own probabilities
    (few cases cannot show a small ECE, whatever the calibration)."""
    rng = np.random.default_rng(seed)
    floor_rng = np.random.default_rng(seed + 1)
    rows: dict = {}
    if baseline is not None:
        probabilities = baseline.probabilities(logits)
        flagged = baseline.suspicious(probabilities)
        recall = metrics.recalls(labels, baseline.labels(logits))
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
                logits[fit],
                labels[fit],
                target_sensitivity=target_sensitivity,
                groups=groups[fit],
                version=version,
                prior=prior,
                prior_strength=prior_strength,
            )
            probabilities = calibration.probabilities(logits[rest])
            truth = labels[rest]
            cumulative = np.cumsum(probabilities, axis=1)
            floor = np.median(
                [
                    metrics.expected_calibration_error(
                        # Inverse-CDF draws; the clip keeps a rounding-short last
                        # cumulative value from naming a fourth class.
                        np.minimum(
                            (floor_rng.random(len(rest))[:, None] > cumulative).sum(1),
                            len(CLASSES) - 1,
                        ),
                        probabilities,
                    )
                    for _ in range(FLOOR_LABEL_DRAWS)
                ]
            )
            recall = metrics.recalls(truth, calibration.labels(logits[rest]))
            flagged = calibration.suspicious(probabilities)
            values = {
                "ece": metrics.expected_calibration_error(truth, probabilities),
                "ece_floor": float(floor),
                **{f"recall_{n}": float(recall[c]) for c, n in enumerate(CLASSES)},
                "sensitivity": float(flagged[truth == MALIGNANT].mean()),
                "threshold_fitted": float(calibration.threshold is not None),
                "n_test": len(rest),
            }
            if "prior" in calibration.fitted_on:
                values["prior_strength"] = calibration.fitted_on["prior"]["strength"]
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
        # Per draw, for paired comparisons of fits on the same draws (`paired`).
        rows[str(k)]["per_draw"] = {
            "ece": samples["ece"],
            "balanced_recall": [
                float(np.nanmean(r))
                for r in zip(*(samples[f"recall_{n}"] for n in CLASSES), strict=True)
            ],
        }
    return rows


def paired(shipped: dict, ablation: dict) -> dict:
    """Per k, shipped minus ablation over the same draws: mean ECE and balanced-recall
    differences and the share of draws where the shipped fit's ECE is lower. The medians
    of two curves hide how much of their difference is the draws'; paired differences
    do not."""
    out = {}
    for k, row in shipped.items():
        other = ablation.get(k)
        if k == "training" or other is None or "per_draw" not in row:
            continue
        ece = np.subtract(row["per_draw"]["ece"], other["per_draw"]["ece"])
        recall = np.subtract(
            row["per_draw"]["balanced_recall"], other["per_draw"]["balanced_recall"]
        )
        out[k] = {
            "ece_difference_mean": float(ece.mean()),
            "ece_lower_share": float((ece < 0).mean()),
            "balanced_recall_difference_mean": float(np.nanmean(recall)),
            "draws": len(ece),
        }
    return out


def _fold_dir(loso_dir: Path | None, source: str) -> Path | None:
    """The fold model trained without ``source``, if ``loso_dir`` holds it."""
    fold = None if loso_dir is None else Path(loso_dir) / f"without-{source}"
    return fold if fold is not None and (fold / "model.json").is_file() else None


def site_curve(
    loso_dir: Path | None,
    weights: Path,
    *,
    ks: tuple[int, ...] = DEFAULT_K,
    draws: int = 20,
    seed: int = 0,
    previous: dict | None = None,
    scores_dir: Path = FOLD_SCORES_DIR,
) -> dict:
    """Every source as the new site, scored by its fold model (from ``loso_dir`` or the
    fold scores kept in ``scores_dir``).

    Folds run one at a time, hours or sessions apart: a source with neither keeps its
    fold-model row from ``previous`` (the earlier report, same ks and draws) rather than
    falling back to the committed model, which scores it only when there is no such row."""
    from ml.weights_io import read_meta

    report: dict = {
        "ks": list(ks),
        "draws": draws,
        "seed": seed,
        "calibration_version": FORMAT_VERSION,
        "prior": PRIOR_CHOICE,
        "prior_strength_ablation": PRIOR_STRENGTH,
        "folds": {},
    }
    for source in SOURCES:
        scored = fold_scores(loso_dir, source, store=scores_dir)
        earlier = _earlier_fold(previous, source, ks=list(ks), draws=draws, seed=seed)
        if scored is None and earlier is not None:
            report["folds"][source] = earlier
            continue
        honest = scored is not None
        if not honest:
            meta = read_meta(weights)
            scored = {
                **score_source(Path(weights), source),
                "model": np.array(meta.version),
                "temperature": np.float64(meta.temperature),
                "class_bias": np.asarray(meta.class_bias, np.float64),
            }
        used = ~scored["doppler"]
        baseline = SiteCalibration.from_training(
            temperature=float(scored["temperature"]),
            class_bias=[float(v) for v in scored["class_bias"]],
        )
        data = (scored["logits"][used], scored["labels"][used], scored["groups"][used])
        report["folds"][source] = {
            "model": str(scored["model"]),
            "held_out_in_training": not honest,
            "n": int(used.sum()),
            "patients": len(np.unique(scored["groups"][used])),
            # Shipped: fitted toward the fold model's own calibration, as the portal fits
            # toward the installed model's, the prior's strength chosen by the reads.
            "curve": curve(
                *data, ks=ks, draws=draws, baseline=baseline, seed=seed, prior=baseline
            ),
            # The ablations, on the same draws: a fixed strength, no prior, version 1.
            "curve_prior_fixed": curve(
                *data,
                ks=ks,
                draws=draws,
                seed=seed,
                prior=baseline,
                prior_strength=PRIOR_STRENGTH,
            ),
            "curve_without_prior": curve(*data, ks=ks, draws=draws, seed=seed),
            "curve_version_1": curve(*data, ks=ks, draws=draws, seed=seed, version=1),
        }
        row = report["folds"][source]
        row["paired_with_version_1"] = paired(row["curve"], row["curve_version_1"])
        row["paired_without_prior"] = paired(row["curve"], row["curve_without_prior"])
        row["paired_with_prior_fixed"] = paired(row["curve"], row["curve_prior_fixed"])
    missing = [
        s for s, f in report["folds"].items() if f.get("current_version_missing")
    ]
    if missing:
        report["note_version"] = (
            f"**{', '.join(missing)}: ablation rows only.** The fold model that scored "
            "them was not on this machine when the shipped calibration's fit changed, "
            "and its scores were not kept then, so their rows are the earlier report's "
            "(same draws), shown as the fit that made them; re-run "
            "`python -m ml site-curve --loso DIR` once their fold models exist."
        )
    stand_ins = [s for s, f in report["folds"].items() if f["held_out_in_training"]]
    if stand_ins:
        report["note"] = (
            f"**No LOSO fold model existed for {', '.join(stand_ins)}**, so the committed "
            "model scored those sources, and each was in its training: its logits are "
            "better separated than a new hospital's would be. What those rows show honestly "
            "is how a site calibration moves calibration and the operating point with k; "
            "re-run `python -m ml site-curve --loso DIR` once their fold models exist."
        )
    return report


def _earlier_fold(
    previous: dict | None, source: str, *, ks: list[int], draws: int, seed: int
) -> dict | None:
    """``source``'s fold-model row of an earlier site-curve report made with the same draws.

    A row of an earlier calibration format or fit is carried as what it measured: the
    training row and its curve under the ablation it now is (version 1's; version 2's
    without a prior or with the fixed strength), with no curve of the shipped fit (that
    needs the fold model's logits again)."""
    if not previous or (
        previous.get("ks"),
        previous.get("draws"),
        previous.get("seed"),
    ) != (ks, draws, seed):
        return None
    row = previous.get("folds", {}).get(source)
    if row is None or row.get("held_out_in_training", True):
        return None
    version = previous.get("calibration_version", 1)
    if version == FORMAT_VERSION and previous.get("prior") == PRIOR_CHOICE:
        return {**row, "carried": True}
    if version == 1:
        ablation = "curve_version_1"
    elif version == FORMAT_VERSION:
        fixed = previous.get("prior_strength")
        ablation = "curve_without_prior" if fixed is None else "curve_prior_fixed"
        if fixed is not None and fixed != PRIOR_STRENGTH:
            return None
    else:
        return None
    training = {k: v for k, v in row["curve"].items() if k == "training"}
    return {
        **row,
        "curve": training,
        ablation: {k: v for k, v in row["curve"].items() if k != "training"},
        "carried": True,
        "current_version_missing": True,
    }


CAUTION_MULTIPLES = (1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)
CAUTION_TARGET = 0.95


def _auc(scored: dict, keep: np.ndarray) -> float | None:
    """Malignant vs benign AUC of the raw softmax on the kept scans (None if undefined)."""
    labels = scored["labels"][keep]
    value = metrics.malignant_vs_benign_auc(
        labels, metrics.softmax(scored["logits"][keep])
    )
    return None if np.isnan(value) else value


def caution_multiple(passing: list[dict[str, float]]) -> float | None:
    """The smallest multiple at which every fold's held-out pass rate reaches the target;
    None without folds or when no multiple in the grid does."""
    if not passing:
        return None
    return next(
        (
            m
            for m in CAUTION_MULTIPLES
            if all(rates[str(m)] >= CAUTION_TARGET for rates in passing)
        ),
        None,
    )


def _earlier_caution_fold(previous: dict | None, source: str) -> dict | None:
    """``source``'s fold of an earlier caution report searched over the same multiples."""
    for fold in (previous or {}).get("folds", []):
        if fold["source"] == source and set(fold["passing"]) == {
            str(m) for m in CAUTION_MULTIPLES
        }:
            carried = {**fold, "carried": True}
            carried.setdefault("auc_at_multiple", previous.get("multiple"))
            return carried
    return None


def caution_report(
    weights: Path,
    loso_dir: Path | None,
    previous: dict | None = None,
    *,
    scores_dir: Path = FOLD_SCORES_DIR,
) -> dict:
    """The "unusual for this model" caution's threshold, set by leave-one-source-out.

    Each fold model's own threshold is the 97.5th percentile of its validation scores (the
    two training sources). The rule searched is a multiple m of that percentile: the
    smallest m in ``CAUTION_MULTIPLES`` at which at least ``CAUTION_TARGET`` of every
    held-out source's scans pass is chosen, and the shipped threshold is m times the
    shipped model's own percentile. Per fold also: AUC (malignant vs benign, raw logits)
    on passing and cautioned scans — a caution that says nothing about accuracy teaches
    readers to ignore it.

    A fold whose model is not in ``loso_dir`` is measured on its kept scores
    (:func:`fold_scores`); without those it is carried from ``previous`` (the earlier
    report): its pass rates per multiple and its AUCs were measured on its own model, so
    folds trained sessions apart still choose m together."""
    from ml.weights_io import read_meta

    meta = read_meta(weights)
    folds, scored_by_source = [], {}
    for source in SOURCES:
        scored = fold_scores(loso_dir, source, store=scores_dir)
        if scored is None:
            carried = _earlier_caution_fold(previous, source)
            if carried is not None:
                folds.append(carried)
            continue
        scored_by_source[source] = scored
        threshold = float(scored["ood_threshold"])
        used = ~scored["doppler"]
        scores = scored["ood_score"][used]
        folds.append(
            {
                "source": source,
                "model": str(scored["model"]),
                "n": int(used.sum()),
                "threshold": threshold,
                "passing": {
                    str(m): float((scores <= m * threshold).mean())
                    for m in CAUTION_MULTIPLES
                },
                "doppler_passing_at_1": float(
                    (scored["ood_score"][~used] <= threshold).mean()
                )
                if (~used).any()
                else None,
            }
        )
    chosen = caution_multiple([fold["passing"] for fold in folds])
    rows = []
    for fold in folds:
        if fold["source"] in scored_by_source:
            scored = scored_by_source[fold["source"]]
            used = ~scored["doppler"]
            below = scored["ood_score"] <= (chosen or 1.0) * fold["threshold"]
            passing, cautioned = used & below, used & ~below
            fold["auc_passing"] = _auc(scored, passing)
            fold["auc_cautioned"] = _auc(scored, cautioned)
            fold["auc_at_multiple"] = chosen
        elif fold["auc_at_multiple"] != chosen:
            # Carried: its AUCs were taken at another multiple; not re-measurable here.
            fold["auc_passing"] = fold["auc_cautioned"] = None
        rows.append(
            {
                "model": fold["model"],
                "source": fold["source"],
                "n": fold["n"],
                "passing_before": fold["passing"]["1.0"],
                "passing_after": fold["passing"][str(chosen)] if chosen else None,
                "note": "LOSO fold model, its held-out source"
                + (" (carried from the earlier report)" if fold.get("carried") else "")
                + "; AUC m|b passing "
                + ("–" if fold["auc_passing"] is None else f"{fold['auc_passing']:.3f}")
                + ", cautioned "
                + (
                    "–"
                    if fold["auc_cautioned"] is None
                    else f"{fold['auc_cautioned']:.3f}"
                ),
            }
        )
    shipped = meta.ood_threshold * chosen if chosen else None
    for source in SOURCES:
        scored = score_source(weights, source)
        used = ~scored["doppler"]
        rows.append(
            {
                "model": meta.version,
                "source": source,
                "n": int(used.sum()),
                "passing_before": float(
                    (scored["ood_score"][used] <= meta.ood_threshold).mean()
                ),
                "passing_after": None
                if shipped is None
                else float((scored["ood_score"][used] <= shipped).mean()),
                "note": "shipped model; the source was in its training",
            }
        )
    names = ", ".join(f["source"] for f in folds) or "none"
    description = (
        "The Mahalanobis score of `ml/ood.py`, shown as a caution, not a verdict. Its "
        "threshold is set leave one source out: each fold model's 97.5th percentile of "
        "its validation scores times m, with m the smallest of "
        f"{list(CAUTION_MULTIPLES)} at which >= {CAUTION_TARGET:.2f} of every held-out "
        f"source's scans pass. Folds with a model: {names}. "
        + (
            f"Chosen m = {chosen}: shipped threshold {shipped:.2f} "
            f"({chosen} x {meta.ood_threshold:.2f}). "
            if chosen
            else "No multiple in the grid (or no fold) reaches the target: not re-set. "
        )
        + "Command: `python -m ml site-curve --loso var/loso --set-caution`."
    )
    return {
        "threshold_before": meta.ood_threshold,
        "multiple": chosen,
        "threshold": shipped,
        "folds": folds,
        "description": description,
        "rows": rows,
    }
